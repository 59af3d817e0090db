"""Dispatch: queued tasks onto free slots, one loop per pool (ORCH-1301, ORCH-1303).

A pool's loop wakes on its ``wakeup`` event (a submit, a freed slot, a replica
change), takes every task that can be placed now in the queue's fair order
(:func:`~llama_orch.core.placement.next_dispatch`), reserves a slot on the
chosen replica and starts the task's run; when the run is over, whatever the
way, :meth:`Dispatcher.release` gives the slot back and settles what the run
measured (service-time model, deadlines, session budget, prefix index).

With a ``state:`` section the store picks the task instead (``stored.py``),
and then calls :meth:`Dispatcher.launch` itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from llama_orch.core.api import ErrorEvent
from llama_orch.core.errors import ErrorCode
from llama_orch.core.placement import Chooser, Dispatch, Orphaned, ReplicaView, next_dispatch
from llama_orch.core.predict import ShareTracker
from llama_orch.core.replica import ReplicaSetKey

from .deadlines import DeadlineStats
from .ending import error_event
from .metrics import Metrics
from .placer import Placer
from .policies import choose_replica
from .pools import Pool, Replica
from .preemption import Preemptor
from .runner import Runner
from .sessions import SessionTable
from .tasks import TaskRecord
from .telemetry import EngineScraper
from .tracing import Tracing
from .workload import Workload

if TYPE_CHECKING:
    from llama_orch.policy_host import PolicyHost

    from .catalog_service import CatalogService

__all__ = ["Dispatcher"]

_log = logging.getLogger("llama_orch.orchestratord")


RECHECK_S = 0.05  # the least time between two checks of a held head (ORCH-2932)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _pin_of(rec: TaskRecord) -> ReplicaSetKey | None:
    return rec.set_key  # set while queued only for pinned tasks (ORCH-1302)


class Dispatcher:
    """Dispatch and slot accounting; collaborators in the constructor (ORCH-2420)."""

    def __init__(
        self,
        *,
        runner: Runner,
        workload: Workload,
        placer: Placer,
        preemptor: Preemptor,
        sessions: SessionTable,
        shares: ShareTracker,
        deadlines: DeadlineStats,
        metrics: Metrics,
        tracing: Tracing,
        scraper: EngineScraper,
        policies: PolicyHost | None,
        catalog: CatalogService,
    ) -> None:
        self.runner = runner
        self.catalog = catalog  # per-version metrics at the end of a run (ORCH-3380)
        self.workload = workload
        self.placer = placer
        self.preemptor = preemptor
        self.sessions = sessions
        self.shares = shares
        self.deadlines = deadlines
        self.metrics = metrics
        self.tracing = tracing
        self.scraper = scraper
        self.policies = policies  # swapped by a policy reload (ORCH-8570)
        # ORCH-2931/2932: per pool the head the dispatch guard holds and since when, and
        # the wakeup that re-checks it
        self._held: dict[str, tuple[str, float]] = {}
        self._recheck: dict[str, asyncio.TimerHandle] = {}

    async def loop(self, pool: Pool) -> None:
        """The pool's dispatcher: runs until cancelled."""
        while True:
            await pool.wakeup.wait()
            pool.wakeup.clear()
            try:
                await self.dispatch_ready(pool)
            except Exception:
                # ORCH-2414: a bug in one step must not stop the pool's dispatching
                # for good; the next wakeup (a submit, a freed slot) tries again.
                _log.exception("dispatcher of pool %s: a dispatch step failed", pool.id)

    async def dispatch_ready(self, pool: Pool) -> None:
        """Dispatch queued tasks of ``pool`` until none can be placed now."""
        while True:
            step = next_dispatch(
                pool.queue,
                self.workload.views(pool),
                _pin_of,
                self.affinity,
                # ORCH-2310: the pool's placement policy picks inside the set, among
                # the replicas the dispatch guard leaves open (ORCH-2931)
                lambda t: self._chooser(pool, t),
            )
            if step is None:
                await self.preemptor.maybe_preempt(pool)
                return
            rec = step.item
            try:
                self._start(pool, step)
            except Exception as exc:
                # ORCH-2414: the task was taken off the queue; it gets its terminal
                # event instead of being lost, and the next tasks go on.
                _log.exception("dispatcher of pool %s: task %s failed", pool.id, rec.task_id)
                if rec.runner is None:
                    rec.finish(
                        error_event(
                            rec, f"internal error: {exc!r}", ErrorCode.INTERNAL, retriable=False
                        )
                    )

    def _chooser(self, pool: Pool, rec: TaskRecord) -> Chooser:
        """The placement policy's chooser, behind the dispatch guard when the pool has
        one (ORCH-2931, ORCH-2932): the replicas where the head's prefill would push a
        running task past its guard limit are closed to it; with all closed it is held
        (None: nothing passes it), unless waiting would miss its own deadline."""
        choose = self.placer.chooser(pool, rec, self.affinity(rec))
        now = time.monotonic()
        holds = self.workload.guard_holds(pool, rec, now)
        if not holds:
            self._dispatched_after_hold(pool, rec, now)
            return choose
        soonest = min(hold + service for hold, service in holds.values())
        if rec.deadline is not None and soonest > (rec.deadline - now) * 1000:
            return choose  # ORCH-2932: the hold would miss its deadline: it goes now

        def guarded(views: list[ReplicaView]) -> ReplicaView | None:
            open_ = [v for v in views if v.replica_id not in holds]
            picked = choose(open_) if any(v.free > 0 for v in open_) else None
            if picked is not None:
                self._dispatched_after_hold(pool, rec, now)
            elif any(v.free > 0 for v in views):
                self._hold(pool, rec, now, holds)
            return picked

        return guarded

    def _hold(
        self, pool: Pool, rec: TaskRecord, now: float, holds: dict[str, tuple[float, float]]
    ) -> None:
        """ORCH-2932: the head waits; re-checked at the guarding tasks' forecast end (and
        before its deadline's slack is gone), besides every freed slot and submit."""
        held = self._held.get(pool.id)
        if held is None or held[0] != rec.task_id:
            self._held[pool.id] = (rec.task_id, now)
            _log.info(
                "dispatch guard: task %s held (%s)",
                rec.task_id,
                ", ".join(f"{rid}: {h:.0f} ms to the guarding tasks' end" for rid, (h, _s) in
                          sorted(holds.items())),
                extra={"pool_id": pool.id, "task_id": rec.task_id},
            )  # fmt: skip
        wait_ms = min(hold for hold, _service in holds.values())
        if rec.deadline is not None:
            slack = (rec.deadline - now) * 1000 - min(h + svc for h, svc in holds.values())
            wait_ms = min(wait_ms, max(0.0, slack))
        timer = self._recheck.pop(pool.id, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        # at least RECHECK_S apart: a task overrunning its forecast is forecast to end
        # in a few ms again and again (ORCH-2914); its end wakes the loop anyway
        delay = max(wait_ms / 1000, RECHECK_S)
        self._recheck[pool.id] = loop.call_later(delay, pool.wakeup.set)

    def _dispatched_after_hold(self, pool: Pool, rec: TaskRecord, now: float) -> None:
        held = self._held.pop(pool.id, None)
        if held is None:
            return
        if held[0] == rec.task_id:
            _log.info(
                "dispatch guard: task %s dispatched after a hold of %.0f ms",
                rec.task_id,
                (now - held[1]) * 1000,
                extra={"pool_id": pool.id, "task_id": rec.task_id},
            )

    def _start(self, pool: Pool, step: Dispatch[TaskRecord] | Orphaned[TaskRecord]) -> None:
        """Start one dispatch step: end an orphaned or expired task, or start its runner."""
        rec = step.item
        if isinstance(step, Orphaned):
            rec.fail(
                ErrorCode.POOL_UNAVAILABLE,
                "no Ready replica is left in the task's replica set",
                retriable=True,
            )
            return
        if rec.deadline is not None and time.monotonic() > rec.deadline:
            # ORCH-1006: expired in the queue, never reaches an engine
            rec.fail(ErrorCode.DEADLINE_UNMET, "deadline passed while queued", retriable=False)
            self.deadlines.missed(pool.id, rec.priority)
            return
        replica = pool.replicas[step.replica_id]
        if self.policies is not None:  # ORCH-8523: the placement policy's pick
            picked = choose_replica(
                self.policies,
                pool,
                rec,
                step,
                self.affinity(rec),
                workload=self.workload,
                scraper=self.scraper,
                placer=self.placer,
            )
            if picked is None:  # failed closed (ORCH-8550)
                rec.fail(
                    ErrorCode.POOL_UNAVAILABLE,
                    "the placement policy failed (on_error: closed)",
                    retriable=True,
                )
                return
            replica = picked
        self.placer.dispatched(pool, replica, rec)  # ORCH-2302, ORCH-2320
        rec.pinned = rec.set_key is not None
        rec.set_key = step.set_key
        self.launch(pool, replica, rec)

    def launch(self, pool: Pool, replica: Replica, rec: TaskRecord) -> None:
        """queued → running on ``replica``: reserve the slot and start the runner; the
        slot is given back by :meth:`release`, once, however the run ends (ORCH-2421)."""
        self.shares.observe(rec.priority, rec.tenant)
        replica.busy += 1
        try:
            rec.dispatch(replica.state.replica_id)
            rec.engine_version = replica.state.engine_version
            rec.dispatched = time.monotonic()
            rec.last_progress = None
            # this run's measurements for the service-time model (ORCH-1952)
            rec.run_first_token = rec.last_token = None
            rec.run_tokens_before, rec.busy_sum, rec.run_chunks = rec.engine_tokens, 0, 0
            self.workload.started(pool.id, replica.state.replica_id, rec)
            self.tracing.dispatched(rec, replica.state.replica_id, rec.engine_version)
        except BaseException:
            replica.busy -= 1  # no runner will release the slot
            self.workload.ended(pool.id, replica.state.replica_id, rec)
            raise
        rec.runner = asyncio.create_task(
            self.runner.run(pool, replica, rec), name=f"task-{rec.task_id}"
        )
        rec.runner.add_done_callback(lambda _t: self.release(pool, replica, rec))

    def release(self, pool: Pool, replica: Replica, rec: TaskRecord) -> None:
        """The run is over: free the slot and settle what it measured."""
        # A done-callback runs even when the runner was cancelled before it started.
        replica.busy -= 1
        self.workload.ended(pool.id, replica.state.replica_id, rec)
        self.preemptor.released(pool, rec)
        if rec.state == "queued":  # requeued or preempted: it will be dispatched again
            self.placer.finished(pool, replica, rec)  # ORCH-2350: its slot is free again
            pool.wakeup.set()
            return
        if not rec.terminal:  # defensive: every dispatched task ends exactly once
            rec.finish(
                ErrorEvent(
                    code=ErrorCode.INTERNAL,
                    message="task ended without outcome",
                    engine=rec.engine,
                    pool_id=rec.pool_id,
                )
            )
        attrs = {
            "engine": rec.engine,
            "engine_version": rec.engine_version,
            "pool_id": rec.pool_id,
            "replica_id": replica.state.replica_id,
        }
        if rec.tokens_out:
            self.metrics.tokens_out.add(rec.tokens_out, attrs)
        self.catalog.task_ended(pool, replica.state, rec)  # per version (ORCH-3380)
        self.placer.finished(pool, replica, rec)  # ORCH-2302: prompt + answer
        engine_ms = _ms(time.monotonic() - rec.dispatched) if rec.dispatched else 0
        engine_ms += rec.engine_ms_before
        self.workload.observe(pool, replica, rec, time.monotonic())  # ORCH-1952
        if rec.deadline is not None:
            met = rec.state == "completed" and (rec.finished_at or 0) <= rec.deadline
            self.deadlines.observe(pool.id, rec.priority, met=met)
        if rec.session_key:
            self.sessions.record(
                rec.session_key,
                replica.state.replica_id,
                rec.prompt_tokens,
                rec.tokens_out,
                reserved=rec.prompt_tokens + rec.request.max_tokens,
                engine_ms=engine_ms,
                set_key=rec.set_key,
                cost_per_token=rec.cost_per_token,
            )
        pool.wakeup.set()

    def affinity(self, rec: TaskRecord) -> str | None:
        """The replica the task's session last ran on (ORCH-1404)."""
        s = self.sessions.get(rec.session_key) if rec.session_key else None
        return s.replica_id if s else None
