"""Supervision of one replica: watch, restart with backoff, circuit breaker (ORCH-4121).

:class:`ReplicaSupervisor` owns the life of one :class:`Replica` after its
pool was provisioned: it launches the engine (through the launch callable the
pool manager gives it), watches both the process (crash) and liveness probes
(hang), and on a failure publishes ``failed`` with ``last_error`` and
``backoff_ms``, waits with exponential backoff and jitter and launches again
on a new port; ``breaker_failures`` failures within ``breaker_window_s`` open
the circuit and the replica stays ``failed`` until a reload or a reset
(ORCH-POOL-3007, ORCH-POOL-3015, ORCH-POOL-3016). The pool manager composes
one per replica and only calls :meth:`start` and :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from llama_orch.core.config import PoolConfig
from llama_orch.core.replica import ReplicaState

from ._supervise import Backoff, CircuitBreaker, Counters, probe_until_unresponsive
from .engine import EngineProcess
from .launch_api import Prepared
from .launchers import Launched

__all__ = ["Launch", "Replica", "ReplicaSupervisor"]

log = logging.getLogger("llama_orch.pool_managerd")

Launch = Callable[["Replica", Prepared], Awaitable[Launched]]


@dataclass(eq=False)
class Replica:
    """One replica as the pool manager tracks it; ``state`` is the published snapshot."""

    state: ReplicaState
    pool: PoolConfig
    engine: EngineProcess | None = None
    supervisor: ReplicaSupervisor | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # first Ready or failure
    retired: bool = False  # drained or replaced: never restarted again


class ReplicaSupervisor:
    """Launch, watch, and restart one replica until it is retired or its breaker opens."""

    def __init__(
        self,
        rep: Replica,
        prep: Prepared,
        *,
        launch: Launch,
        release: Callable[[EngineProcess, str], None],
        publish: Callable[..., None],
        counters: Counters,
        stopping: Callable[[], bool],
    ) -> None:
        self.replica = rep
        self.prep = prep
        self._launch = launch
        self._release = release
        self._publish = publish  # ReplicaState field changes as keywords
        self._counters = counters
        self._stopping = stopping
        self.task: asyncio.Task[None] | None = None

    def start(self, *, launched: EngineProcess | None = None) -> asyncio.Task[None]:
        """Supervise in a task; ``launched`` is an engine already Ready (a reload's)."""
        self.task = asyncio.create_task(
            self._run(launched), name=f"supervise-{self.replica.state.replica_id}"
        )
        return self.task

    async def stop(self) -> None:
        """Cancel the supervision and wait for it; the engine is the caller's to stop."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def _over(self) -> bool:
        return self.replica.retired or self._stopping()

    async def _run(self, engine: EngineProcess | None) -> None:
        rep, pool = self.replica, self.replica.pool
        backoff = Backoff(
            pool.restart_backoff_initial_s, pool.restart_backoff_max_s, pool.restart_jitter
        )
        breaker = CircuitBreaker(pool.breaker_failures, pool.breaker_window_s)
        try:
            while True:
                error: str | None = None
                if engine is None:
                    engine, error = await self._launch(rep, self.prep)
                if engine is not None:
                    rep.settled.set()
                    backoff.reset()
                    error = await self._watch(engine)
                    engine = None
                if error is None or self._over():
                    return
                if breaker.record_failure():
                    self._counters.breaker_opened += 1
                    self._publish(
                        status="failed",
                        backoff_ms=0,
                        circuit_open=True,
                        last_error=(
                            f"circuit open: {len(breaker.failures)} failures within "
                            f"{pool.breaker_window_s:g}s, no more restarts until a reload "
                            f"or a reset; last: {error}"
                        ),
                    )
                    return
                delay = backoff.next()
                self._publish(status="failed", last_error=error, backoff_ms=int(delay * 1000))
                rep.settled.set()
                await asyncio.sleep(delay)
                if self._over():
                    return
                self._counters.restarts += 1
                rep.state = msgspec.structs.replace(rep.state, restarts=rep.state.restarts + 1)
        finally:
            rep.settled.set()

    async def _watch(self, engine: EngineProcess) -> str | None:
        """Wait for a crash (process exit) or a hang (liveness probes); the engine
        is stopped on return. None when the replica was retired or we stop."""
        rep = self.replica
        pool, rid = rep.pool, rep.state.replica_id
        exited = asyncio.create_task(engine.wait(), name=f"exit-{rid}")
        probe = asyncio.create_task(
            probe_until_unresponsive(
                rep.state.base_url,
                interval_s=pool.health_probe_interval_s,
                timeout_s=pool.health_probe_timeout_s,
                failures=pool.health_probe_failures,
            ),
            name=f"probe-{rid}",
        )
        try:
            await asyncio.wait({exited, probe}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (exited, probe):
                task.cancel()
            await asyncio.gather(exited, probe, return_exceptions=True)
        if self._over():
            return None
        if exited.done() and not exited.cancelled() and exited.exception() is None:
            log.error(
                "replica %s: engine exited with code %s:\n%s",
                rid,
                exited.result(),
                engine.output_tail(),
            )
            await engine.stop()  # reap anything left in its process group
            self._counters.crashes += 1
            error = f"engine exited with code {exited.result()}"
        else:
            reason = probe.result() if probe.done() and not probe.cancelled() else "probe ended"
            log.error("replica %s: engine unresponsive, killing its process group: %s", rid, reason)
            await engine.kill()
            self._counters.unresponsive_kills += 1
            error = f"engine unresponsive, killed: {reason}"
        self._release(engine, rep.state.base_url)
        return error
