"""Hard preemption (ORCH-1901..1903): interrupt lower-priority work for urgent work.

Used only when ``scheduling.preemption`` is ``hard`` and the replica's adapter
declares ``interruptible_decode``. At most one interruption per pool is in
flight; the interrupted task goes back to the front of its flow and resumes
as a continuation (ORCH-1902).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable

from llama_orch.core.adapter_api import Capability, WorkerAdapter
from llama_orch.core.api import MetricsEvent
from llama_orch.core.errors import OrchError
from llama_orch.core.queue import PRIORITIES

from .metrics import Metrics
from .pools import Pool, Replica
from .tasks import TaskRecord
from .workload import Workload

__all__ = ["Preemptor"]

_log = logging.getLogger("llama_orch.orchestratord")


class Preemptor:
    def __init__(
        self,
        mode: str,
        workload: Workload,
        metrics: Metrics,
    ) -> None:
        self.mode = mode
        self._workload = workload  # asked which tasks run, never holding its table
        self._metrics = metrics
        self._interruptible: weakref.WeakKeyDictionary[WorkerAdapter, bool] = (
            weakref.WeakKeyDictionary()
        )
        self._in_flight: set[str] = set()  # pools with a hard preemption in flight
        # with a state store the queue is the store's: an interrupted task goes back
        # there through the store's requeue, not into pool.queue (ORCH-2579)
        self.local_queue = True

    async def _is_interruptible(self, replica: Replica) -> bool:
        """Whether the replica's adapter declares ``interruptible_decode`` (cached)."""
        known = self._interruptible.get(replica.adapter)
        if known is None:
            try:
                props = await replica.adapter.props()
            except OrchError:
                return False  # unknown for now; asked again next time
            known = Capability.INTERRUPTIBLE_DECODE in props.capabilities
            self._interruptible[replica.adapter] = known
        return known

    async def maybe_preempt(self, pool: Pool) -> None:
        """Hard preemption (ORCH-1901, ORCH-1902): the head cannot be placed; interrupt
        the most recently dispatched running task of a strictly lower priority on an
        eligible replica whose adapter declares ``interruptible_decode``."""
        if self.mode != "hard" or pool.id in self._in_flight:
            return
        head, meta = pool.queue.peek(), pool.queue.peek_meta()
        if head is None or meta is None:
            return
        pin = head.set_key
        await self.interrupt_below(
            pool,
            meta[0],
            lambda t: pin is None or t.set_key == pin,
            lambda: pool.queue.peek() is head,
        )

    async def interrupt_below(
        self,
        pool: Pool,
        priority: str,
        eligible: Callable[[TaskRecord], bool],
        still_blocked: Callable[[], bool],
    ) -> None:
        """Interrupt the most recently dispatched running task of ``pool`` with a
        priority strictly below ``priority`` that ``eligible`` accepts, on a Ready
        replica whose adapter declares ``interruptible_decode`` (ORCH-1902); nothing
        when ``still_blocked`` turns false while the adapter is asked."""
        if self.mode != "hard" or pool.id in self._in_flight:
            return
        rank = PRIORITIES.index(priority)
        victims = sorted(
            (
                t
                for t in self._workload.running_on(pool.id)
                if PRIORITIES.index(t.priority) > rank and eligible(t)
            ),
            key=lambda t: t.dispatched or 0.0,
            reverse=True,
        )
        for victim in victims:
            replica = pool.replicas.get(victim.replica_id or "")
            if replica is None or not replica.state.ready:
                continue
            if not await self._is_interruptible(replica):
                continue
            # props() may have yielded: act only if nothing changed meanwhile
            if still_blocked():
                self._stop(pool, victim)
            return

    def in_flight(self, pool: Pool) -> bool:
        """An interruption of a run of ``pool`` is in flight here."""
        return pool.id in self._in_flight

    async def interruptible(self, pool: Pool) -> list[str]:
        """The Ready replicas of ``pool`` whose adapters declare ``interruptible_decode``
        (ORCH-2598: the replicas a store may choose a victim on)."""
        return [
            rid
            for rid, r in pool.replicas.items()
            if r.state.ready and await self._is_interruptible(r)
        ]

    async def interrupt(self, pool: Pool, victim: TaskRecord) -> bool:
        """Interrupt ``victim``, a run a store chose (ORCH-2598), when it runs on a Ready,
        interruptible replica of ``pool`` and no interruption is in flight here."""
        if self.mode != "hard":
            return False
        replica = pool.replicas.get(victim.replica_id or "")
        if replica is None or not replica.state.ready:
            return False
        if not await self._is_interruptible(replica):
            return False
        return self._stop(pool, victim)

    def _stop(self, pool: Pool, victim: TaskRecord) -> bool:
        if victim.state != "running" or victim.runner is None or pool.id in self._in_flight:
            return False
        victim.preempt_requested = True
        self._in_flight.add(pool.id)
        victim.runner.cancel()
        self._metrics.preemptions.add(
            1,
            {
                "mode": "hard",
                "engine": pool.engine,
                "pool_id": pool.id,  # one label set for both modes (ORCH-7002)
            },
        )
        return True

    def released(self, pool: Pool, rec: TaskRecord) -> None:
        """The task's runner ended: a preemption of it is no longer in flight."""
        if rec.preempt_requested:
            rec.preempt_requested = False
            self._in_flight.discard(pool.id)

    def requeue(self, pool: Pool, rec: TaskRecord) -> None:
        """Put an interrupted task back at the front of its flow (ORCH-1902); it keeps
        its replica set so that its continuation comes from the same model."""
        assert rec.dispatched is not None
        rec.engine_ms_before += int((time.monotonic() - rec.dispatched) * 1000)
        rec.preemptions += 1
        rec.requeue()
        rec.append(MetricsEvent(preempted=True, queue_depth=len(pool.queue)))
        if self.local_queue:  # else the store's requeue puts it back (ORCH-2579)
            pool.queue.push(rec, rec.priority, tenant=rec.tenant, deadline=rec.deadline, front=True)
        _log.info("task %s preempted after %d tokens", rec.task_id, rec.tokens_out)
