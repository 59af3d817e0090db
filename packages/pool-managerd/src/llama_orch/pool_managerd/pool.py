"""The pool manager: provision, start, gate, supervise, reload and stop replicas.

orchestratord runs it embedded (single host); ``pool-managerd`` runs it in
the foreground. Every replica walks ``provisioning → starting → ready``; each
transition is a fresh :class:`ReplicaState` handed to ``on_change`` on the
event-loop thread. A replica failure is recorded, never raised.

Supervision of each replica (restart with backoff, breaker, probes) is a
:class:`.supervisor.ReplicaSupervisor`; launching an engine is the
:class:`.launchers.EngineLauncher`'s, with the engine's
:class:`.launch_api.Launcher`. The breaker keeps a replica ``failed`` until a
reload or a ``reset()`` (ORCH-3026).
``stop()`` leaves no engine process behind, also when ``start()`` is
cancelled (ORCH-POOL-3010).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import msgspec
from llama_orch.core.adapter_api import AdapterLoadError, load_adapter_class
from llama_orch.core.config import Config, PoolConfig, PoolManagerdConfig
from llama_orch.core.replica import ReplicaState

from ._supervise import Backoff, Counters, wait_idle
from .engine import EngineProcess
from .errors import PoolManagerError, ProvisionError, ReloadError, VerificationError
from .launchers import LAUNCHABLE_ENGINES, EngineLauncher, Launched, Prepared
from .provision import abort_builds
from .runtimes import check_launch, prepare
from .supervisor import Replica, ReplicaSupervisor

__all__ = [
    "ENGINE_HOST_ENV",
    "LAUNCHABLE_ENGINES",
    "Drain",
    "PoolManager",
    "engine_host",
    "launch_blocker",
]

ENGINE_HOST_ENV = "LLAMA_ORCH_ENGINE_HOST"


def engine_host(cfg: PoolManagerdConfig, environ: Mapping[str, str] | None = None) -> str:
    """Where engines listen and are reported: ``$LLAMA_ORCH_ENGINE_HOST``, else
    ``pool_managerd.engine_host`` (ORCH-6223; on Kubernetes the pod IP)."""
    return (environ if environ is not None else os.environ).get(ENGINE_HOST_ENV) or cfg.engine_host


log = logging.getLogger("llama_orch.pool_managerd")


def launch_blocker(pool: PoolConfig, config: Config) -> str | None:
    """Why this pool's replicas may not be launched here, or None (ORCH-POOL-3005)."""
    if (misfit := check_launch(pool)) is not None:
        return misfit
    if pool.devices is None and not config.allow_cpu_inference:
        return (
            f"pool {pool.id} has no `devices` (it would run on the CPU) and CPU inference "
            "is disabled; to allow it (development and CI only) set "
            "`allow_cpu_inference: true` at the top level of the config, or give the pool "
            'a GPU mask such as `devices: "0"`'
        )
    return None


Drain = Callable[[list[str]], Awaitable[None]]


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
        self._pools = {p.id: p for p in config.pools if not p.endpoints}
        self._replicas: dict[str, Replica] = {}
        for pool in self._pools.values():
            for n in range(pool.replicas):
                self._add_replica(pool, f"{pool.id}-r{n}")
        self._generation = dict.fromkeys(self._pools, 0)
        self._prepared: dict[str, Prepared] = {}  # per pool, once provisioned
        self._locks = {pid: asyncio.Lock() for pid in self._pools}
        self._supervisors: set[asyncio.Task[None]] = set()
        self._pool_tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stop_lock = asyncio.Lock()
        self.counters = Counters()
        self._launcher = EngineLauncher(self.counters, engine_host(config.pool_managerd))
        # provide(ref, engine=..., progress=...) -> (path, sha256); orchestratord's
        # catalog sets it to check its trust policy before a model loads (ORCH-3313)
        self.model_provider: Callable[..., tuple[Path, str]] | None = None

    def _add_replica(self, pool: PoolConfig, rid: str) -> Replica:
        rep = Replica(
            ReplicaState(
                pool_id=pool.id,
                replica_id=rid,
                engine=pool.engine,
                status="provisioning",
                model_ref=pool.model,
                cpu_inference=pool.devices is None,
            ),
            pool,
        )
        self._replicas[rid] = rep
        return rep

    # ------------------------------------------------------------------ public

    def replicas(self) -> list[ReplicaState]:
        return [r.state for r in self._replicas.values()]

    def pool_ids(self) -> list[str]:
        return list(self._pools)

    async def start(self) -> None:
        """Provision every pool and launch its replicas; returns once each replica
        is Ready or has failed once (supervision goes on in the background)."""
        if self._stopping:
            raise PoolManagerError("this PoolManager was stopped; create a new one")
        if self._pool_tasks:
            raise PoolManagerError("this PoolManager was already started")
        for rep in self._replicas.values():
            self._emit(rep.state)
        self._pool_tasks = [
            asyncio.create_task(self._start_pool(pool), name=f"pool-{pool.id}")
            for pool in self._pools.values()
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
            supervisors = list(self._supervisors)
            for task in supervisors:
                task.cancel()
            await asyncio.gather(*supervisors, return_exceptions=True)
            # A spawn is shielded from cancellation: the launcher waits for its pid.
            await self._launcher.stop_all(timeout)
            for rep in self._replicas.values():
                if rep.state.status not in ("failed", "stopped"):
                    self._set(rep, status="stopped", backoff_ms=0)

    async def drain(self, pool_id: str, *, wait: Drain | None = None) -> None:
        """Stop placing on the pool's replicas (``draining``), await ``wait`` (the
        orchestrator lets running tasks finish until its deadline), then stop
        the engines (ORCH-POOL-3012)."""
        async with self._lock(pool_id):
            reps = [r for r in self._replicas.values() if r.state.pool_id == pool_id]
            for rep in reps:
                rep.retired = True
                if rep.state.status not in ("failed", "stopped"):
                    self._set(rep, status="draining", backoff_ms=0)
            if wait is not None:
                await wait([r.state.replica_id for r in reps])
            await self._retire(reps)

    async def reload(
        self,
        pool_id: str,
        model_ref: str,
        *,
        expected_digest: str | None = None,
        drain: Drain | None = None,
    ) -> list[ReplicaState]:
        """Replace the pool's replicas by replicas of ``model_ref`` as one action
        (ORCH-POOL-3019): new replicas start and pass the readiness gate while the
        old ones keep serving; then placement switches (new ``ready``, old
        ``draining``), ``drain`` runs and the old engines stop. Any failure before
        the switch stops the new engines and raises :class:`ReloadError`: the old
        replicas were never touched."""
        async with self._lock(pool_id):
            if self._stopping:
                raise ReloadError("the pool manager is stopping")
            new_pool = msgspec.structs.replace(self._pools[pool_id], model=model_ref)
            try:
                prep = await self._prepare(new_pool)
                if expected_digest is not None and prep.digest != expected_digest:
                    raise VerificationError(
                        f"model {model_ref} has sha256 {prep.digest}, expected {expected_digest}"
                    )
            except (AdapterLoadError, ProvisionError) as exc:
                self.counters.reload_rollbacks += 1
                raise ReloadError(
                    f"reload of pool {pool_id} to {model_ref} refused, the current replicas "
                    f"keep serving: {exc}",
                    verification=True,
                ) from exc
            self._generation[pool_id] += 1
            gen = self._generation[pool_id]
            old = [r for r in self._replicas.values() if r.state.pool_id == pool_id]
            new = [
                self._add_replica(new_pool, f"{pool_id}-g{gen}-r{n}")
                for n in range(new_pool.replicas)
            ]
            for rep in new:
                rep.retired = True  # not supervised until the switch
                self._emit(rep.state)
            launched = await asyncio.gather(*(self._launch(rep, prep) for rep in new))
            errors = [err for _, err in launched if err]
            if errors:
                for rep, (engine, _) in zip(new, launched, strict=True):
                    if engine is not None:
                        await engine.stop()
                        self._launcher.release(engine)
                    self._set(rep, status="stopped", last_error=f"reload rolled back: {errors[0]}")
                    del self._replicas[rep.state.replica_id]
                self.counters.reload_rollbacks += 1
                raise ReloadError(
                    f"reload of pool {pool_id} to {model_ref} rolled back, the current "
                    f"replicas keep serving: {errors[0]}"
                )
            for rep, (engine, _) in zip(new, launched, strict=True):
                rep.retired = False
                rep.settled.set()
                self._supervise_start(rep, prep, launched=engine)
            self._pools[pool_id] = new_pool
            self._prepared[pool_id] = prep
            self.counters.reloads += 1
            for rep in old:
                rep.retired = True
                if rep.state.status not in ("failed", "stopped"):
                    self._set(rep, status="draining", backoff_ms=0)
            if drain is not None:
                try:
                    await drain([r.state.replica_id for r in old])
                except Exception:
                    log.exception("drain callback of the reload of pool %s failed", pool_id)
            await self._retire(old)
            return [r.state for r in new]

    async def reset(self, pool_id: str) -> list[str]:
        """Restart the pool's replicas whose circuit is open, with a fresh backoff
        and breaker, without a reload (ORCH-3026); returns their ids."""
        async with self._lock(pool_id):
            prep = self._prepared.get(pool_id)
            if prep is None or self._stopping:
                return []
            reset = [
                r
                for r in self._replicas.values()
                if r.state.pool_id == pool_id and r.state.circuit_open and not r.retired
            ]
            for rep in reset:
                self.counters.breaker_resets += 1
                self._set(rep, status="provisioning", circuit_open=False, backoff_ms=0)
                self._supervise_start(rep, prep)
            return [r.state.replica_id for r in reset]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ state

    def _lock(self, pool_id: str) -> asyncio.Lock:
        if pool_id not in self._pools:
            raise ReloadError(f"pool {pool_id} is not managed here")
        return self._locks[pool_id]

    def _emit(self, state: ReplicaState) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(state)
        except Exception:
            log.exception("on_change callback failed for %s", state.replica_id)

    def _set(self, rep: Replica, **changes: Any) -> None:
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

    async def _retire(self, reps: list[Replica]) -> None:
        await asyncio.gather(*(r.supervisor.stop() for r in reps if r.supervisor is not None))
        engines = [r.engine for r in reps if r.engine is not None]
        # Drained engines may still be finishing a slot whose client is gone.
        urls = [r.state.base_url for r in reps if r.engine is not None and r.state.base_url]
        await asyncio.gather(*(wait_idle(u) for u in urls), return_exceptions=True)
        await asyncio.gather(*(e.stop() for e in engines), return_exceptions=True)
        for engine in engines:
            self._launcher.release(engine)
        for rep in reps:
            if rep.state.status != "stopped":
                self._set(rep, status="stopped", backoff_ms=0)
            self._replicas.pop(rep.state.replica_id, None)

    # ------------------------------------------------------------------ start

    async def _prepare(self, pool: PoolConfig) -> Prepared:
        """Provision the pool's engine and model in a worker thread (ORCH-POOL-3031)."""
        adapter_cls = load_adapter_class(pool.engine)
        loop = asyncio.get_running_loop()

        def progress(msg: str) -> None:
            # Called from the worker thread; callbacks run on the loop thread.
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._report, msg)

        return await asyncio.to_thread(
            prepare, pool, adapter_cls, progress, model_provider=self.model_provider
        )

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
        backoff = Backoff(
            pool.restart_backoff_initial_s, pool.restart_backoff_max_s, pool.restart_jitter
        )
        for attempt in range(pool.provision_retries + 1):
            retry = True
            try:
                prep = await self._prepare(pool)
            except (AdapterLoadError, VerificationError) as exc:
                error, retry = str(exc), False  # retrying cannot help (ORCH-3027)
            except ProvisionError as exc:
                error = str(exc)
            except Exception as exc:  # e.g. a full disk: fail this pool, keep the others
                log.exception("provisioning pool %s failed", pool.id)
                error = f"provisioning failed: {type(exc).__name__}: {exc}"
            else:
                self._prepared[pool.id] = prep
                self._report(
                    f"pool {pool.id}: starting {len(reps)} replica(s) of {prep.executable}"
                )
                for rep in reps:
                    self._supervise_start(rep, prep)
                await asyncio.gather(*(rep.settled.wait() for rep in reps))
                return
            if not retry or attempt == pool.provision_retries:
                break
            delay = backoff.next()
            log.error("pool %s cannot start, retrying in %.1fs: %s", pool.id, delay, error)
            for rep in reps:
                self._set(rep, status="failed", last_error=error, backoff_ms=int(delay * 1000))
            await asyncio.sleep(delay)
            self.counters.provision_retries += 1
        log.error("pool %s cannot start: %s", pool.id, error)
        for rep in reps:
            self._set(rep, status="failed", last_error=error, backoff_ms=0)

    async def _launch(self, rep: Replica, prep: Prepared) -> Launched:
        def on_spawn(engine: EngineProcess) -> None:
            rep.engine = engine  # before the gate: a retire may have to stop it

        return await self._launcher.launch(
            rep.pool,
            rep.state.replica_id,
            prep,
            publish=lambda **changes: self._set(rep, **changes),
            on_spawn=on_spawn,
        )

    # ------------------------------------------------------------------ supervision

    def _supervise_start(
        self, rep: Replica, prep: Prepared, *, launched: EngineProcess | None = None
    ) -> None:
        sup = ReplicaSupervisor(
            rep,
            prep,
            launch=self._launch,
            release=self._launcher.release,
            publish=functools.partial(self._set, rep),
            counters=self.counters,
            stopping=lambda: self._stopping,
        )
        rep.supervisor = sup
        task = sup.start(launched=launched)
        self._supervisors.add(task)
        task.add_done_callback(self._supervisors.discard)
