"""Drain, reload and reset of a pool, one implementation per way its engines run
(issue #14 part 2; ORCH-1604, ORCH-1605, ORCH-3025, ORCH-3026).

A pool's engines are run by the embedded pool manager (:class:`EmbeddedPools`),
by remote pool-managerds (:class:`RemotePools`), or by someone else, listed as
``endpoints:`` (:class:`EndpointPools`). :class:`PoolControls` picks the one of a
pool, so the control-plane handlers and the catalog's promote never branch on
the kind. Every implementation lets running tasks finish until a deadline and
then ends them with one typed ``POOL_UNAVAILABLE`` event (:func:`drain_tasks`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from llama_orch.core.errors import PoolUnavailable, PoolUnready, UntrustedArtifact

from .pools import Pool
from .remote import RemotePoolManagerClient
from .service import Orchestrator

if TYPE_CHECKING:
    from llama_orch.pool_managerd.pool import PoolManager

__all__ = [
    "DrainResult",
    "EmbeddedPools",
    "EndpointPools",
    "PoolControl",
    "PoolControls",
    "Reloaded",
    "RemotePools",
    "drain_tasks",
    "follow_drains",
]


class DrainResult(msgspec.Struct):
    pool_id: str
    finished: int  # running tasks that finished before the deadline
    ended: int  # tasks ended with POOL_UNAVAILABLE at the deadline
    waited_ms: int


class Reloaded(msgspec.Struct, frozen=True):
    """What a reload left running: the new replicas, the digest they serve, and how the
    tasks on the old ones ended."""

    model_digest: str
    replicas: list[str]
    drain: DrainResult


async def drain_tasks(
    orch: Orchestrator,
    pool: Pool,
    deadline_s: float,
    *,
    replica_ids: list[str] | None = None,
) -> DrainResult:
    """Let running tasks (on ``replica_ids``, or the whole pool) finish until the
    deadline, then end what remains with ``POOL_UNAVAILABLE``. A whole-pool
    drain also ends the queued tasks at the deadline (ORCH-1604); with a state
    store it is recorded there first, on the store's clock, and applies to every
    instance (ORCH-2588, ORCH-2589); a request to this instance answers the counts of
    every instance's tasks once their terminals are at the store (ORCH-2610)."""
    started = time.monotonic()
    bridge = orch.state if replica_ids is None else None
    listed: tuple[str, ...] = ()
    if bridge is not None:
        drain = await bridge.drains.record(pool, deadline_s)
        deadline_s, listed = drain.deadline_in_ms / 1000, drain.tasks
    deadline = started + deadline_s

    def mine() -> list[Any]:
        return [
            t
            for t in orch.tasks.active()
            if t.pool_id == pool.id
            and (
                (replica_ids is None and t.state in ("queued", "running"))
                or (t.state == "running" and replica_ids and t.replica_id in replica_ids)
            )
        ]

    initial = {t.task_id for t in mine() if t.state == "running"}

    def settled() -> bool:
        left = mine()
        # a whole-pool drain stops waiting when only queued tasks are left: they
        # are never placed on a draining pool
        return not left or (replica_ids is None and all(t.state == "queued" for t in left))

    await orch.tasks.wait_for(settled, deadline - time.monotonic())  # ORCH-2413: no polling
    ended = 0
    runners = []
    message = f"pool {pool.id} drain deadline reached"
    # ORCH-2566, ORCH-2589: queued in the store, the pool's tasks end there, whichever
    # instance admitted them, or another instance would still run them
    at_store = await bridge.drains.end_queued(pool, message) if bridge is not None else set()
    for rec in mine():
        if rec.runner is not None:
            runners.append(rec.runner)
        if orch.state is not None and rec.state == "queued":
            if rec.task_id not in at_store:
                continue  # dispatched by another instance meanwhile: not this drain's
            at_store.discard(rec.task_id)
        orch.end(rec, orch.error_event(rec, message))  # ORCH-2411
        ended += 1
    ended += len(at_store)  # queued tasks this instance did not know
    # Let the cancelled runners close their engine connections before the
    # engines are stopped: llama-server holds off SIGTERM while a stream is
    # open (measured: 10 s until SIGKILL), but exits at once without one.
    if runners:
        await asyncio.wait(runners, timeout=5.0)
    if bridge is not None and bridge.drains.answering():
        # every instance's tasks, counted from their terminals at the store (ORCH-2610)
        bound = deadline + 2 * bridge.drains.lease_ms / 1000
        finished, ended = await bridge.drains.settle(pool, listed, bound)
        return DrainResult(pool.id, finished, ended, int((time.monotonic() - started) * 1000))
    if bridge is not None and await bridge.store.busy(pool.id):
        # another instance still runs tasks of the pool: they end at the deadline there
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    finished = sum(
        1 for tid in initial if (t := orch.tasks.get(tid)) is not None and t.state == "completed"
    )
    return DrainResult(pool.id, finished, ended, int((time.monotonic() - started) * 1000))


async def _reopened(orch: Orchestrator, pool: Pool) -> None:
    pool.draining = False
    if orch.state is not None:  # on every instance (ORCH-2590)
        await orch.state.drains.reopened(pool)


def follow_drains(orch: Orchestrator, controls: PoolControls) -> None:
    """ORCH-2588, ORCH-2590: with a store, a drain another instance recorded runs here
    as a drain request here would; brought back, the replicas this instance held as
    draining for it (``endpoints:``) serve again."""
    if orch.state is None:
        return

    async def run(pool: Pool, left_s: float) -> None:
        await controls.for_pool(pool).drain(orch, pool, left_s)

    def reopen(pool: Pool) -> None:
        if type(controls.for_pool(pool)) is not EndpointPools:
            return  # engines stopped here come back with a reload here
        for state in list(pool.states.values()):
            if state.status == "draining":
                orch.on_replica_change(msgspec.structs.replace(state, status="ready"))

    orch.state.drains.attach(run, reopen)


def _add(a: DrainResult, b: DrainResult) -> DrainResult:
    return DrainResult(
        a.pool_id, a.finished + b.finished, a.ended + b.ended, a.waited_ms + b.waited_ms
    )


class PoolControl(Protocol):
    """What the control plane and the catalog do to a pool, whoever runs its engines."""

    async def drain(self, orch: Orchestrator, pool: Pool, deadline_s: float) -> DrainResult:
        """Stop the pool for good: running tasks finish until the deadline, the rest
        end typed, the engines stop where this side runs them."""
        ...

    async def reload(
        self,
        orch: Orchestrator,
        pool: Pool,
        model_ref: str,
        digest: str | None,
        deadline_s: float,
    ) -> Reloaded:
        """Switch the pool to ``model_ref`` atomically (a digest mismatch or a failed
        start rolls back and raises ``UntrustedArtifact`` / ``PoolUnready``); a drained
        pool serves again."""
        ...

    async def reset(self, pool: Pool) -> list[str]:
        """Restart the replicas whose circuit breaker is open; their ids."""
        ...


class EmbeddedPools:
    """Pools the embedded pool manager runs."""

    def __init__(self, manager: PoolManager) -> None:
        self.manager = manager

    async def drain(self, orch: Orchestrator, pool: Pool, deadline_s: float) -> DrainResult:
        result: list[DrainResult] = []

        async def wait(ids: list[str]) -> None:
            result.append(await drain_tasks(orch, pool, deadline_s))

        await self.manager.drain(pool.id, wait=wait)
        return result[0] if result else DrainResult(pool.id, 0, 0, 0)

    async def reload(
        self,
        orch: Orchestrator,
        pool: Pool,
        model_ref: str,
        digest: str | None,
        deadline_s: float,
    ) -> Reloaded:
        from llama_orch.pool_managerd.errors import ReloadError

        drained: list[DrainResult] = []

        async def wait(ids: list[str]) -> None:
            drained.append(await drain_tasks(orch, pool, deadline_s, replica_ids=ids))

        try:
            states = await self.manager.reload(
                pool.id, model_ref, expected_digest=digest, drain=wait
            )
        except ReloadError as exc:
            if exc.verification:
                raise UntrustedArtifact(str(exc), pool_id=pool.id) from exc
            raise PoolUnready(str(exc), pool_id=pool.id) from exc
        await _reopened(orch, pool)  # a reload brings a drained pool back into service
        return Reloaded(
            states[0].model_digest if states else "",
            [s.replica_id for s in states],
            drained[0] if drained else DrainResult(pool.id, 0, 0, 0),
        )

    async def reset(self, pool: Pool) -> list[str]:
        return await self.manager.reset(pool.id)


class EndpointPools:
    """Pools whose engines someone else runs (``endpoints:``): a drain stops placing
    on them and ends the tasks; reload and reset belong where the engines run."""

    @staticmethod
    def _not_here(pool: Pool, what: str) -> PoolUnavailable:
        return PoolUnavailable(
            f"pool {pool.id} is not run by the embedded pool manager nor a configured "
            f"pool-managerd; {what} it where its engines run",
            pool_id=pool.id,
        )

    async def drain(self, orch: Orchestrator, pool: Pool, deadline_s: float) -> DrainResult:
        for state in list(pool.states.values()):
            if state.status in ("ready", "starting"):
                orch.on_replica_change(msgspec.structs.replace(state, status="draining"))
        return await drain_tasks(orch, pool, deadline_s)

    async def reload(
        self,
        orch: Orchestrator,
        pool: Pool,
        model_ref: str,
        digest: str | None,
        deadline_s: float,
    ) -> Reloaded:
        raise self._not_here(pool, "reload")

    async def reset(self, pool: Pool) -> list[str]:
        raise self._not_here(pool, "reset")


class RemotePools(EndpointPools):
    """Pools that remote pool-managerds run (ORCH-3025)."""

    def __init__(self, clients: Sequence[RemotePoolManagerClient]) -> None:
        self.clients = list(clients)

    def _none_found(self, pool: Pool, what: str) -> PoolUnavailable:
        # ORCH-6232: the pool is served through discovery, which found no pool-managerd
        return PoolUnavailable(
            f"pool {pool.id} is served by discovered pool-managerds and none is known at "
            f"the moment (pool_manager_discovery found no address); cannot {what}",
            pool_id=pool.id,
        )

    async def drain(self, orch: Orchestrator, pool: Pool, deadline_s: float) -> DrainResult:
        result = await super().drain(orch, pool, deadline_s)
        # The pool-managerds stop the engines once the tasks are done; one that does
        # not answer does not spare the others.
        outcomes = await asyncio.gather(
            *(client.drain(pool.id) for client in self.clients), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return result

    async def reload(
        self,
        orch: Orchestrator,
        pool: Pool,
        model_ref: str,
        digest: str | None,
        deadline_s: float,
    ) -> Reloaded:
        """One pool-managerd after the other, so the others keep serving."""
        if not self.clients:
            raise self._none_found(pool, "reload")
        new: list[str] = []
        served = ""
        drained = DrainResult(pool.id, 0, 0, 0)
        for client in self.clients:
            old = client.replica_ids(pool.id)
            job = asyncio.create_task(
                client.reload(pool.id, model_ref, digest, int(deadline_s * 1000))
            )
            # The switch shows on the stream: old replicas turn draining.
            while not job.done() and any(
                client.status(rid) not in ("draining", "stopped", "failed") for rid in old
            ):
                await asyncio.sleep(0.05)
            if old and not job.done():
                drained = _add(drained, await drain_tasks(orch, pool, deadline_s, replica_ids=old))
                await client.drained(pool.id)
            doc = await job  # a refusal or rollback raises its typed error
            new += doc["replicas"]
            served = doc["model_digest"]
        await _reopened(orch, pool)  # a reload brings a drained pool back into service
        for client in self.clients:
            client.republish(pool.id)  # replicas held as draining while the pool was
        return Reloaded(served, new, drained)

    async def reset(self, pool: Pool) -> list[str]:
        if not self.clients:
            raise self._none_found(pool, "reset")
        ids: list[str] = []
        for client in self.clients:
            ids += await client.reset(pool.id)
        return ids


class PoolControls:
    """The :class:`PoolControl` of each pool, from how the config runs it."""

    def __init__(
        self,
        manager: PoolManager | None,
        remotes: list[RemotePoolManagerClient] | None = None,
        discovered: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.manager = manager
        # The live list: discovery adds and removes clients (ORCH-6231).
        self.remotes = remotes if remotes is not None else []
        self.discovered = discovered  # pools served through pool_manager_discovery
        self._embedded = EmbeddedPools(manager) if manager is not None else None
        self._endpoints = EndpointPools()

    def for_pool(self, pool: Pool) -> PoolControl:
        remote = [r for r in self.remotes if r.serves(pool.id)]
        if remote or pool.id in self.discovered:
            return RemotePools(remote)
        if self._embedded is not None and pool.id in self._embedded.manager.pool_ids():
            return self._embedded
        return self._endpoints
