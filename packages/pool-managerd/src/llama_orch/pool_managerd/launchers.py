"""Launching one engine replica: preload check, spawn, readiness gate (ORCH-4112).

:class:`EngineLauncher` owns what a launch needs beyond the replica: the
loopback ports handed out, the engine processes alive, spawns in flight. The
pool manager supervises replicas and asks it to launch; it never touches a
process itself. What to run comes from :func:`.runtimes.plan` for every engine
of ``LAUNCHABLE_ENGINES`` (ORCH-POOL-3030).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from llama_orch.core.adapter_api import AdapterTarget
from llama_orch.core.config import PoolConfig
from llama_orch.core.errors import OrchError

from ._gate import readiness_gate
from ._preload import preload_check
from ._supervise import Counters
from .engine import EngineProcess, free_port
from .errors import PoolManagerError, PreloadError
from .provision_python import link_shared
from .runtimes import LAUNCHABLE_ENGINES, Prepared, plan

__all__ = ["LAUNCHABLE_ENGINES", "EngineLauncher", "Launched", "Prepared", "Publish"]

log = logging.getLogger("llama_orch.pool_managerd")

# (engine, None) when Ready; (None, last_error) otherwise, the engine already stopped.
Launched = tuple[EngineProcess | None, str | None]
# Publishes a replica transition: ReplicaState field changes as keywords.
Publish = Callable[..., None]


class EngineLauncher:
    def __init__(self, counters: Counters, host: str = "127.0.0.1") -> None:
        self.counters = counters
        self.host = host  # where engines listen and are reported (ORCH-6223)
        self.engines: list[EngineProcess] = []  # every process that may be alive
        self._spawning: set[asyncio.Task[None]] = set()
        self._ports: set[int] = set()
        self._engine_ports: dict[int, list[int]] = {}  # id(engine) -> its ports

    def _port(self) -> int:
        while (port := free_port(self.host)) in self._ports:
            pass
        self._ports.add(port)
        return port

    def release(self, engine: EngineProcess, base_url: str = "") -> None:
        """Forget a stopped engine (and its ports)."""
        with contextlib.suppress(ValueError):
            self.engines.remove(engine)
        self._ports.discard(_port_of(base_url))
        self._ports.difference_update(self._engine_ports.pop(id(engine), []))

    async def _spawn(self, engine: EngineProcess) -> None:
        self.engines.append(engine)
        task = asyncio.ensure_future(engine.start())
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)
        await asyncio.shield(task)

    async def stop_all(self, timeout: float) -> None:
        """Stop every engine, including those whose (shielded) spawn is in flight."""
        await asyncio.gather(*self._spawning, return_exceptions=True)
        engines, self.engines = self.engines, []
        await asyncio.gather(*(e.stop(timeout) for e in engines), return_exceptions=True)

    async def launch(
        self,
        pool: PoolConfig,
        rid: str,
        prep: Prepared,
        *,
        publish: Publish,
        on_spawn: Callable[[EngineProcess], None],
    ) -> Launched:
        """Preload-check, spawn and gate one engine for replica ``rid``."""
        if prep.model_path is not None:
            try:
                await asyncio.to_thread(
                    preload_check,
                    prep.model_path,
                    ram_headroom_factor=pool.ram_headroom_factor,
                    devices=pool.devices,
                )
            except (PreloadError, OSError) as exc:
                self.counters.preload_failed += 1
                return None, f"{rid} preload refused: {exc}"
            self.counters.preload_ok += 1
        scratch = Path(tempfile.mkdtemp(prefix=f"llorch-{rid}-"))
        ports: list[int] = []

        def port() -> int:
            ports.append(self._port())
            return ports[-1]

        try:
            launch = plan(pool, prep, host=self.host, port=port, scratch=scratch)
        except PoolManagerError as exc:
            scratch.rmdir()
            self._ports.difference_update(ports)
            return None, f"{rid} cannot be launched: {exc}"
        for link, shared in launch.links:
            try:  # a cache the engine can do without: a failed link only costs time
                link_shared(link, shared)
            except OSError as exc:
                log.warning("%s: no shared %s (%s)", rid, shared, exc)
        engine = EngineProcess(
            launch.command,
            env=launch.env,
            name=rid,
            stop_signal=launch.stop_signal,
            cwd=launch.cwd,
            scratch=scratch,
        )
        self._engine_ports[id(engine)] = ports
        on_spawn(engine)
        target = AdapterTarget(
            replica_id=rid,
            base_url=launch.base_url,
            model_ref=pool.model,
            model_digest=prep.digest,
            engine_version=prep.engine_version,
            options=launch.options,
        )
        try:
            await self._spawn(engine)
            # base_url is published with ``ready`` only: a consumer that keys its
            # adapter on the address must see it change on every restart.
            publish(
                status="starting",
                base_url="",
                pid=engine.pid,
                model_ref=pool.model,
                engine_version=prep.engine_version,
                model_digest=prep.digest,
                backoff_ms=0,
            )
            props = await readiness_gate(
                engine,
                prep.adapter_cls,
                target,
                timeout=pool.startup_timeout_s,
                health_path=launch.health_path,
            )
        except TimeoutError:
            error = f"{rid} not ready within startup_timeout_s={pool.startup_timeout_s:g}"
        except (PoolManagerError, OrchError, OSError) as exc:
            error = f"{rid} failed its readiness gate: {exc}"
        except Exception as exc:  # an adapter bug must not take the other replicas down
            log.exception("adapter %s raised during the readiness gate", pool.engine)
            error = f"{rid} failed its readiness gate: {type(exc).__name__}: {exc}"
        else:
            engine.remember_children()  # e.g. vLLM's EngineCore (ORCH-POOL-3037)
            publish(
                status="ready",
                base_url=launch.base_url,
                slots=props.slots,
                ctx=props.ctx,
                ready_at=time.time(),
                last_error=None,
                circuit_open=False,
            )
            return engine, None
        await engine.stop()
        self.release(engine, launch.base_url)
        self.counters.start_failures += 1
        tail = "\n".join(engine.output_tail().splitlines()[-20:])
        if tail and tail not in error:
            error += "\n--- engine output (last lines) ---\n" + tail
        log.error("%s", error)
        return None, error


def _port_of(base_url: str) -> int:
    try:
        return int(base_url.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1
