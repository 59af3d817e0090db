"""The pool manager: provision, start, gate, watch and stop engine replicas.

orchestratord runs it embedded (single host); ``pool-managerd`` runs it in
the foreground. Every replica walks ``provisioning → starting → ready`` or
ends ``failed`` (with ``last_error``); each transition is a fresh
:class:`ReplicaState` handed to ``on_change`` on the event-loop thread.
A replica failure is recorded, never raised. ``stop()`` leaves no engine
process behind, also when ``start()`` is cancelled (ORCH-POOL-3010).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import msgspec
from llama_orch.core.adapter_api import AdapterLoadError, AdapterTarget, load_adapter_class
from llama_orch.core.config import Config, PoolConfig
from llama_orch.core.errors import OrchError
from llama_orch.core.replica import ReplicaState

from ._gate import readiness_gate
from .engine import EngineProcess, LlamaServerSpec, free_port
from .errors import PoolManagerError, ProvisionError
from .provision import EngineBinary, abort_builds, provision_llama_server, provision_model

__all__ = ["LAUNCHABLE_ENGINES", "PoolManager", "launch_blocker"]

log = logging.getLogger("llama_orch.pool_managerd")
LAUNCHABLE_ENGINES = frozenset({"llamacpp-http"})
_T = TypeVar("_T")


def launch_blocker(pool: PoolConfig, config: Config) -> str | None:
    """Why this pool's replicas may not be launched here, or None (ORCH-POOL-3005)."""
    if pool.engine not in LAUNCHABLE_ENGINES:
        return f"engine {pool.engine} cannot be launched by pool-managerd yet"
    if pool.devices is None and not config.allow_cpu_inference:
        return (
            f"pool {pool.id} has no `devices` (it would run on the CPU) and CPU inference "
            "is disabled; to allow it (development and CI only) set "
            "`allow_cpu_inference: true` at the top level of the config, or give the pool "
            'a GPU mask such as `devices: "0"`'
        )
    return None


@dataclass(eq=False)
class _Replica:
    state: ReplicaState
    engine: EngineProcess | None = None
    watcher: asyncio.Task[None] | None = None


class PoolManager:
    """Starts every pool of ``config`` whose ``endpoints`` list is empty."""

    def __init__(
        self,
        config: Config,
        *,
        on_change: Callable[[ReplicaState], None] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._on_change = on_change
        self._progress = progress
        self._pools = [p for p in config.pools if not p.endpoints]
        self._replicas: dict[str, _Replica] = {}
        for pool in self._pools:
            for n in range(pool.replicas):
                rid = f"{pool.id}-r{n}"
                self._replicas[rid] = _Replica(
                    ReplicaState(
                        pool_id=pool.id,
                        replica_id=rid,
                        engine=pool.engine,
                        status="provisioning",
                        model_ref=pool.model,
                        cpu_inference=pool.devices is None,
                    )
                )
        self._engines: list[EngineProcess] = []
        self._spawning: set[asyncio.Task[None]] = set()
        self._pool_tasks: list[asyncio.Task[None]] = []
        self._ports: set[int] = set()
        self._stopping = False
        self._stop_lock = asyncio.Lock()

    # ------------------------------------------------------------------ public

    def replicas(self) -> list[ReplicaState]:
        return [r.state for r in self._replicas.values()]

    async def start(self) -> None:
        if self._stopping:
            raise PoolManagerError("this PoolManager was stopped; create a new one")
        if self._pool_tasks:
            raise PoolManagerError("this PoolManager was already started")
        for rep in self._replicas.values():
            self._emit(rep.state)
        self._pool_tasks = [
            asyncio.create_task(self._start_pool(pool), name=f"pool-{pool.id}")
            for pool in self._pools
        ]
        try:
            await asyncio.gather(*self._pool_tasks)
        except BaseException:
            # Cancellation (Ctrl-C) or a bug: never leave an engine running.
            await self.stop()
            raise

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop every engine process group (SIGTERM, then SIGKILL). Idempotent."""
        async with self._stop_lock:
            self._stopping = True
            if any(not t.done() for t in self._pool_tasks):
                abort_builds()  # a first-time engine build must not delay shutdown
            for task in self._pool_tasks:
                task.cancel()
            await asyncio.gather(*self._pool_tasks, return_exceptions=True)
            # A spawn is shielded from cancellation, so wait for it to learn its pid.
            await asyncio.gather(*self._spawning, return_exceptions=True)
            watchers = [r.watcher for r in self._replicas.values() if r.watcher]
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            engines, self._engines = self._engines, []
            await asyncio.gather(*(e.stop(timeout) for e in engines), return_exceptions=True)
            for rep in self._replicas.values():
                if rep.state.status not in ("failed", "stopped"):
                    self._set(rep, status="stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ state

    def _emit(self, state: ReplicaState) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(state)
        except Exception:
            log.exception("on_change callback failed for %s", state.replica_id)

    def _set(self, rep: _Replica, **changes: Any) -> None:
        # A new snapshot per transition: a consumer may keep the old one.
        rep.state = msgspec.structs.replace(rep.state, **changes)
        log.info("replica %s is %s", rep.state.replica_id, rep.state.status)
        self._emit(rep.state)

    def _report(self, msg: str) -> None:
        log.info("%s", msg)
        if self._progress is not None:
            try:
                self._progress(msg)
            except Exception:
                log.exception("progress callback failed")

    # ------------------------------------------------------------------ start

    async def _in_thread(self, fn: Callable[..., _T], arg: str | None) -> _T:
        loop = asyncio.get_running_loop()

        def progress(msg: str) -> None:
            # Called from the worker thread; callbacks run on the loop thread.
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._report, msg)

        return await asyncio.to_thread(fn, arg, progress=progress)

    async def _start_pool(self, pool: PoolConfig) -> None:
        reps = [r for r in self._replicas.values() if r.state.pool_id == pool.id]
        blocker = launch_blocker(pool, self._config)
        if blocker is not None:
            log.error("%s", blocker)
            for rep in reps:
                self._set(rep, status="failed", last_error=blocker)
            return
        if pool.devices is None:
            log.warning(
                "pool %s runs on the CPU (allow_cpu_inference: true): development and CI "
                "only, expect low throughput",
                pool.id,
            )
        try:
            adapter_cls = load_adapter_class(pool.engine)
            self._report(f"pool {pool.id}: provisioning model {pool.model}")
            model_path, digest = await self._in_thread(provision_model, pool.model)
            self._report(f"pool {pool.id}: provisioning llama-server")
            binary = await self._in_thread(provision_llama_server, pool.engine_binary)
        except (AdapterLoadError, ProvisionError) as exc:
            error = str(exc)
        except Exception as exc:  # e.g. a full disk: fail this pool, keep the others
            log.exception("provisioning pool %s failed", pool.id)
            error = f"provisioning failed: {type(exc).__name__}: {exc}"
        else:
            self._report(f"pool {pool.id}: starting {len(reps)} replica(s) of {binary.path}")
            await asyncio.gather(
                *(
                    self._start_replica(pool, rep, adapter_cls, binary, model_path, digest)
                    for rep in reps
                )
            )
            return
        log.error("pool %s cannot start: %s", pool.id, error)
        for rep in reps:
            self._set(rep, status="failed", last_error=error)

    def _port(self) -> int:
        while (port := free_port()) in self._ports:
            pass
        self._ports.add(port)
        return port

    async def _spawn(self, engine: EngineProcess) -> None:
        self._engines.append(engine)
        task = asyncio.ensure_future(engine.start())
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)
        await asyncio.shield(task)

    async def _start_replica(
        self,
        pool: PoolConfig,
        rep: _Replica,
        adapter_cls: Any,
        binary: EngineBinary,
        model_path: Any,
        digest: str,
    ) -> None:
        rid = rep.state.replica_id
        spec = LlamaServerSpec(
            binary=binary.path,
            model_path=model_path,
            port=self._port(),
            slots=pool.slots,
            ctx_per_slot=pool.ctx,
            threads=pool.threads,
            continuous_batching=pool.continuous_batching,
            devices=pool.devices,
            alias=pool.model,
            extra_flags=tuple(pool.engine_flags),
        )
        engine = rep.engine = EngineProcess(spec.command(), env=spec.env(), name=rid)
        target = AdapterTarget(
            replica_id=rid,
            base_url=spec.base_url,
            model_ref=pool.model,
            model_digest=digest,
            engine_version=binary.engine_version,
            options=dict(pool.adapter_options),
        )
        try:
            await self._spawn(engine)
            self._set(
                rep,
                status="starting",
                base_url=spec.base_url,
                pid=engine.pid,
                engine_version=binary.engine_version,
                model_digest=digest,
            )
            props = await readiness_gate(
                engine, adapter_cls, target, timeout=pool.startup_timeout_s
            )
        except TimeoutError:
            error = f"{rid} not ready within startup_timeout_s={pool.startup_timeout_s:g}"
        except (PoolManagerError, OrchError, OSError) as exc:
            error = f"{rid} failed its readiness gate: {exc}"
        except Exception as exc:  # an adapter bug must not take the other replicas down
            log.exception("adapter %s raised during the readiness gate", pool.engine)
            error = f"{rid} failed its readiness gate: {type(exc).__name__}: {exc}"
        else:
            self._set(rep, status="ready", slots=props.slots, ctx=props.ctx, ready_at=time.time())
            rep.watcher = asyncio.create_task(self._watch(rep, engine), name=f"watch-{rid}")
            return
        await engine.stop()
        tail = "\n".join(engine.output_tail().splitlines()[-20:])
        if tail and tail not in error:
            error += "\n--- engine output (last lines) ---\n" + tail
        log.error("%s", error)
        self._set(rep, status="failed", last_error=error)

    async def _watch(self, rep: _Replica, engine: EngineProcess) -> None:
        code = await engine.wait()
        if self._stopping or rep.state.status != "ready":
            return
        # Restarts (with backoff) come later; for now the failure is reported.
        log.error(
            "replica %s: engine exited with code %s:\n%s",
            rep.state.replica_id,
            code,
            engine.output_tail(),
        )
        await engine.stop()  # reap anything left in its process group
        self._set(rep, status="failed", last_error=f"engine exited with code {code}")
