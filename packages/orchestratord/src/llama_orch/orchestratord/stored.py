"""orchestratord on a shared state store (ORCH-2520..2529, issue #13).

With a ``state:`` section the store, not this process, holds the queues, quotas,
slot reservations and event logs: admission is ``submit``, dispatch is
``dispatch`` (woken by the pool's doorbell or a local replica change), every
event a task's record appends is written through to the store under the
task's fencing epoch (coalesced: tokens that arrive while a write is in flight
go in the next one), and SSE streams and ``Last-Event-ID`` resumes read the
store's log, so they answer the same on any instance and after a restart.
A :class:`~llama_orch.core.state_lease.LeaseKeeper` renews the leases of the
tasks this instance runs and reaps expired ones of any instance.

Without a ``state:`` section none of this runs (today's in-process path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec
from llama_orch.core.api import EndEvent, ErrorEvent
from llama_orch.core.config import Config, StateOptions
from llama_orch.core.errors import ErrorCode
from llama_orch.core.state_lease import LeaseKeeper
from llama_orch.core.state_store import (
    Dispatched,
    Event,
    Fenced,
    Orphaned,
    Reaped,
    SlotView,
    StateStore,
    StoreUnavailable,
    TaskEnded,
    continuation,
    load_state_store_class,
)

from .ending import Ending, error_event
from .metrics import Metrics
from .pools import Pool, Replica
from .stored_appends import AppendBatcher, TaskWriter
from .stored_drain import StoredDrains
from .stored_local import StoredLog, StoredLogs, stream_frames
from .stored_placement import StorePlacement
from .stored_preemption import needs_log, preempt_for_head, preempt_here, resume
from .stored_task import StoredTask, record_of, spec_of, store_config
from .stored_waiting import SWEEP_ROUNDS, adopt_queued
from .tasks import TaskRecord, TaskStore
from .tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram

    from .dispatch import Dispatcher
    from .metrics import BatchedHistogram

__all__ = ["StoreBridge", "StoredTask", "record_of", "spec_of", "store_config"]

_log = logging.getLogger("llama_orch.orchestratord")
_BELL_WAIT_S = 2.0  # also the period of the replica re-sync when nothing rings


def _set_key(pool: Pool, replica_id: str) -> str:
    k = pool.replicas[replica_id].state.set_key()
    return f"{k.engine}|{k.model_digest}|{k.ctx}|{k.engine_version}"


class _Timed:
    """A store call's duration into ``state_store_op_ms`` (ORCH-2531): a plain context
    manager with the op's attributes made once (a generator-based one and a new dict
    per call were ~1.5 % of the event loop's time under load, ``profile_orch.py``)."""

    __slots__ = ("_attrs", "_hist", "_t0")

    def __init__(self, hist: Histogram | BatchedHistogram, attrs: dict[str, str]) -> None:
        self._hist, self._attrs, self._t0 = hist, attrs, 0.0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._hist.record((time.perf_counter() - self._t0) * 1000, self._attrs)


class StoreBridge:
    def __init__(
        self,
        options: StateOptions,
        *,
        config: Config,
        pools: dict[str, Pool],
        tasks: TaskStore,
        metrics: Metrics,
        tracing: Tracing,
        ending: Ending,
        dispatcher: Dispatcher,
    ) -> None:
        self.options = options
        self.config = config
        self.pools = pools
        self.tasks = tasks
        self.metrics = metrics
        self.ending = ending
        self.dispatcher = dispatcher  # launches what the store dispatched here
        self.placement = StorePlacement(dispatcher)  # the pool's policy and hook (ORCH-2572)
        dispatcher.preemptor.local_queue = False  # the store's queue (ORCH-2579)
        self.store: StateStore = load_state_store_class(options.backend).from_options(options)
        self.appends = AppendBatcher(self.store, timed=self.timed, track=self.track)
        self.drains = StoredDrains(self.store, pools, options.lease_ms)  # ORCH-2588
        self.instance = uuid.uuid4().hex[:12]
        tracing.instance_id = self.instance  # a span attribute (ORCH-2544)
        self.leases = LeaseKeeper(
            self.store, self.instance, options.lease_ms, on_lost=self._lease_lost
        )
        self._writers: dict[str, TaskWriter] = {}
        # the stored events of the runs of this instance, for its streams (ORCH-2571)
        self.logs = StoredLogs(keep_s=min(60.0, config.admission.event_log_retention_s / 2))
        # cancels the control channel delivered, by when: a dispatch or claim whose
        # reply comes after its cancel's message must not start the run (ORCH-2567)
        self._canceled: dict[str, float] = {}
        self._loops: list[asyncio.Task[None]] = []
        # writes and requeues in flight: close() lets them finish (a terminal event
        # appended by shutdown must reach the store after its runner is gone)
        self._chores: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self.live: list[str] = [self.instance]  # last heartbeat round's view (ORCH-2543)
        self._rounds = 0  # heartbeat rounds, for the sweep of unattended tasks (ORCH-2604)
        self._op_attrs: dict[str, dict[str, str]] = {}  # timed()'s, one per op

    def timed(self, op: str) -> _Timed:
        """Record one store call's duration (ORCH-2531)."""
        attrs = self._op_attrs.get(op)
        if attrs is None:
            attrs = self._op_attrs[op] = {"op": op}
        return _Timed(self.metrics.store_op_ms, attrs)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.store.start()
        await self.store.configure(store_config(self.config))
        # ORCH-2540: the control cursor is taken before this instance owns any task
        control = await self.store.control_cursor(self.instance)
        self._loops.append(asyncio.create_task(self._control_loop(control), name="control"))
        await self._heartbeat()
        self._loops.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        for pool in self.pools.values():
            self._loops.append(
                asyncio.create_task(self._dispatch_loop(pool), name=f"store-dispatch-{pool.id}")
            )
        self._loops.append(asyncio.create_task(self.leases.run(self._stop), name="lease-renew"))
        self._loops.append(asyncio.create_task(self._reap_loop(), name="lease-reap"))
        _log.info("state store %s started (instance %s)", self.options.backend, self.instance)

    def stop_dispatching(self) -> None:
        """Shutdown: take no more work; queued tasks stay in the store (ORCH-2527)."""
        self._stop.set()
        for loop in self._loops:
            if loop.get_name().startswith("store-dispatch-"):
                loop.cancel()

    async def close(self) -> None:
        self.stop_dispatching()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.drains.close()
        if self._chores:  # e.g. the terminal events of the tasks shutdown ended
            await asyncio.wait(set(self._chores), timeout=5.0)
        with contextlib.suppress(StoreUnavailable):  # leave the live list now (ORCH-2543)
            await self.store.heartbeat(self.instance, 0)
        await self.store.close()

    # ---------------------------------------------------------------- admission

    async def submit(self, rec: TaskRecord) -> int:
        """Admit at the store (quotas, capacity, full policy: ORCH-2522); the queue
        position. Tasks the full policy displaced already have their terminal there."""
        pool = self.pools[rec.pool_id]
        try:
            with self.timed("submit"):  # and the dispatch, in one step (ORCH-2569)
                admitted, step = await self.store.submit_dispatch(
                    spec_of(rec), self.instance, self.options.lease_ms, self.placement.hint(pool)
                )
        except StoreUnavailable:
            self._withdrawn(rec.task_id)
            raise
        for tid, code in admitted.displaced:
            victim = self.tasks.get(tid)
            if victim is not None and not victim.terminal:
                victim.finish(error_event(victim, "displaced", code))
        if isinstance(step, Orphaned):
            if step.task_id == rec.task_id and self.tasks.get(rec.task_id) is None:
                self.tasks.add(rec)  # so that its local record ends too
            self._orphaned(step.task_id)
        elif step is not None:
            tid = step.task.task_id
            if tid == rec.task_id and self.tasks.get(tid) is None:
                self.tasks.add(rec)  # the record admission built is the one that runs
            # its stored log now, for a stream opened with this answer (ORCH-2571); the run
            # once admission is done with the record (its admission span before dispatch)
            self.logs.live[tid] = StoredLog(step.next_seq)
            asyncio.get_running_loop().call_soon(self._run, pool, step)
        return admitted.queue_position

    def _withdrawn(self, task_id: str) -> None:
        """Not admitted after all (durability not confirmed, ORCH-2551): a run this
        instance's dispatcher started during the wait stops writing and ends, and
        its record goes, so the client may submit the same id again."""
        writer = self._writers.get(task_id)
        if writer is not None:
            writer.kill()
        local = self.tasks.get(task_id)
        if local is None:
            return
        if not local.terminal:
            self.ending.end(local, error_event(local, "admission withdrawn"))
        self.tasks.forget(task_id)

    async def hydrate(self, task_id: str) -> None:
        """Know a task another instance (or this one before a restart) admitted."""
        if self.tasks.get(task_id) is not None:
            return
        view = await self.store.task(task_id)
        if view is not None and self.tasks.get(task_id) is None:
            self.tasks.add(record_of(view.task))

    async def cancel(self, task_id: str) -> None:
        """Cancel at the store first: the terminal is in the log in the same step,
        whichever instance runs the task (ORCH-2510); then end the local run."""
        with contextlib.suppress(KeyError), self.timed("cancel"):
            await self.store.cancel(task_id)

    async def end_queued(self, task_id: str, terminal: ErrorEvent) -> bool:
        """End a task at the store if it is still queued there (a drain, ORCH-2566)."""
        return await self.store.expire(task_id, Event("error", msgspec.json.encode(terminal)))

    def cancel_soon(self, task_id: str) -> None:
        """:meth:`cancel` from synchronous code (a facade's client went away)."""
        self.track(asyncio.get_running_loop().create_task(self.cancel(task_id)))

    def frames(self, task_id: str, start: int, *, joined: bool = True) -> AsyncIterator[bytes]:
        """SSE frames from the store's log, from event ``start`` on (ORCH-2526), with
        keep-alive comments (ORCH-2556); ``joined``: the frames read together leave as
        one chunk (ORCH-2565), else one frame per item (for a facade's decoder)."""
        limits = self.config.limits
        chunk = limits.stream_chunk_bytes if joined else None
        # a task running here: its stored events from this instance (ORCH-2571); the
        # log is taken now, so a run that ends before the stream starts still serves it
        log = self.logs.get(task_id)
        return stream_frames(
            self.store, task_id, start, limits.sse_keepalive_s, log=log, max_chunk=chunk
        )

    # ---------------------------------------------------------------- dispatch

    def _slots(self, pool: Pool) -> list[SlotView]:
        return [
            SlotView(
                replica_id=rid,
                set_key=_set_key(pool, rid),
                ready=r.state.ready,  # a suspect replica reports `starting` (ORCH-1117)
                slots=r.state.slots,
            )
            for rid, r in pool.replicas.items()
        ]

    async def _dispatch_loop(self, pool: Pool) -> None:
        synced: list[SlotView] | None = None
        while True:
            try:
                slots = self._slots(pool)
                if slots != synced:
                    await self.store.set_replicas(pool.id, slots)
                    synced = slots
                with self.timed("dispatch"):  # one round trip, the bell's cursor included
                    step, cursor = await self.store.dispatch_or_cursor(
                        pool.id, self.instance, self.options.lease_ms, self.placement.hint(pool)
                    )
                if isinstance(step, Dispatched):
                    self._run(pool, step)
                    continue
                if isinstance(step, Orphaned):
                    self._orphaned(step.task_id)
                    continue
                await preempt_for_head(self, pool)  # ORCH-2579: with `preemption: hard`
                await self._wait_for_work(pool, cursor, synced)
            except asyncio.CancelledError:
                raise
            except Exception:
                # ORCH-2414: log and go on; a store outage retries after a pause
                _log.exception("store dispatcher of pool %s: a step failed", pool.id)
                await asyncio.sleep(1.0)

    async def _wait_for_work(self, pool: Pool, cursor: str, synced: list[SlotView] | None) -> None:
        """Until the pool's doorbell rings (a submit, a requeue, a slot freed while tasks
        wait: ORCH-2518) or a replica here changes. The store's bell already says whether
        a submit or a freed slot left work to place: only a replica change ends the wait
        early, so the blocking read is not cut off (a cancelled read costs its
        connection) for nothing (ORCH-2570); and this wait is not even woken by them
        (``pool.changed``, not ``pool.wakeup``: ORCH-2596)."""
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self.store.wait_bell(pool.id, cursor, _BELL_WAIT_S))
        ]
        try:
            while True:
                pool.changed.clear()
                waits[1:] = [asyncio.ensure_future(pool.changed.wait())]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if waits[0].done() or self._slots(pool) != synced:
                    return
        finally:
            for t in waits:
                t.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _orphaned(self, task_id: str) -> None:
        rec = self.tasks.get(task_id)
        if rec is not None and not rec.terminal:
            rec.finish(error_event(rec, "no Ready replica is left in the task's replica set"))

    def _run(self, pool: Pool, d: Dispatched) -> None:
        rec = self.tasks.get(d.task.task_id)
        if rec is None:
            rec = record_of(d.task)
            self.tasks.add(rec)
        replica = pool.replicas.get(d.replica_id)
        if rec.terminal or replica is None:
            _log.warning("task %s dispatched to unknown replica %s", rec.task_id, d.replica_id)
            self.drop_log(rec.task_id)
            self.requeue(rec.task_id, d.epoch)
            return
        if needs_log(rec, d):  # streamed elsewhere before: continue from the log (ORCH-2580)
            self.track(asyncio.get_running_loop().create_task(resume(self, pool, rec, d)))
            return
        self.placement.run(self, pool, rec, d)

    def go(self, pool: Pool, replica: Replica, rec: TaskRecord, epoch: int, next_seq: int) -> bool:
        """Run ``rec`` here under ``epoch``, its first event at seq ``next_seq``; False
        when a cancel already came for it."""
        if rec.task_id in self._canceled:
            # its cancel's control message arrived before this dispatch's or claim's
            # reply: the store holds the terminal, no engine request may open (ORCH-2567)
            _log.info("task %s: canceled before its run could start here", rec.task_id)
            self.drop_log(rec.task_id)
            self.leases.release(rec.task_id)
            if not rec.terminal:
                self.tasks.forget(rec.task_id)
            return False
        self.leases.hold(rec.task_id, epoch)
        log = self.logs.live.get(rec.task_id)
        if log is None or log.base != next_seq or log.frames or log.detached:
            log = self.logs.live[rec.task_id] = StoredLog(next_seq)
        writer = TaskWriter(self, rec, epoch, log)
        self._writers[rec.task_id] = writer
        rec.sink = writer.put
        self.dispatcher.launch(pool, replica, rec)
        assert rec.runner is not None
        rec.runner.add_done_callback(lambda _t: self._released(rec, epoch))
        return True

    def runs_here(self, task_id: str) -> bool:
        """This instance writes ``task_id``'s events (its run is this instance's to stop)."""
        return task_id in self._writers

    def drop_log(self, task_id: str) -> None:
        """A log made for a run that does not start here: its streams read the store."""
        log = self.logs.live.pop(task_id, None)
        if log is not None:
            log.detach()

    def _released(self, rec: TaskRecord, epoch: int) -> None:
        self.leases.release(rec.task_id)
        writer = self._writers.pop(rec.task_id, None)
        rec.sink = None
        if writer is not None:
            writer.release()
        if rec.state == "queued" and writer is not None and not writer.dead:
            # unreachable replica before any event (ORCH-1117), or preempted (ORCH-2579):
            # back to the store's front once its last events are stored
            self.requeue(rec.task_id, epoch, writer.settled())

    def track(self, task: asyncio.Task[None]) -> None:
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def requeue(
        self, task_id: str, epoch: int, after: Coroutine[Any, Any, None] | None = None
    ) -> None:
        """Put ``task_id`` back in its queue at the store under ``epoch`` (after ``after``:
        its writer's last answer, ORCH-2624)."""

        async def again() -> None:
            if after is not None:
                await after
            await self.store.requeue(task_id, epoch)

        self.track(asyncio.get_running_loop().create_task(again()))

    def _lease_lost(self, task_id: str) -> None:
        rec = self.tasks.get(task_id)
        pool_id = rec.pool_id if rec is not None else "unknown"
        self.metrics.store_leases_lost.add(1, {"pool_id": pool_id})
        self.lose(task_id)

    def lose(self, task_id: str) -> None:
        """This instance may no longer write for ``task_id``: stop its run (ORCH-2525)."""
        writer = self._writers.get(task_id)
        if writer is not None:
            writer.kill()
        rec = self.tasks.get(task_id)
        if rec is not None and not rec.terminal:
            self.ending.end(rec, error_event(rec, "this instance lost the task"))

    # ---------------------------------------------------------------- control, liveness

    async def _control_loop(self, cursor: str) -> None:
        """Messages other instances left on this instance's control channel (ORCH-2540):
        a cancel accepted elsewhere aborts the engine stream here at once."""
        while True:
            try:
                cursor, messages = await self.store.wait_control(self.instance, cursor, 5.0)
                for msg in messages:
                    if msg.op == "cancel":
                        self._canceled_elsewhere(msg.task_id)
                    elif msg.op == "preempt":  # the store chose our run (ORCH-2598)
                        self._preempt_asked(msg.pool_id, msg.task_id)
                    else:  # a pool drained or brought back at the store (ORCH-2588)
                        self.track(self.drains.heard(msg))
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("control channel of instance %s failed", self.instance)
                await asyncio.sleep(1.0)

    def _preempt_asked(self, pool_id: str, task_id: str) -> None:
        pool = self.pools.get(pool_id)
        if pool is not None:
            self.track(asyncio.get_running_loop().create_task(preempt_here(self, pool, task_id)))

    def _canceled_elsewhere(self, task_id: str) -> None:
        now = time.monotonic()
        self._remember_cancel(task_id, now)
        writer = self._writers.get(task_id)
        if writer is not None:
            writer.kill()  # the store already holds the cancel's terminal
        rec = self.tasks.get(task_id)
        if rec is None or rec.terminal:
            return
        _log.info("task %s: canceled on another instance; aborting its run", task_id)
        self.ending.end(
            rec,
            EndEvent(
                tokens_out=rec.tokens_out,
                decode_ms=int((now - rec.first_token) * 1000) if rec.first_token else 0,
                reason="canceled",
                tokens_in=rec.prompt_tokens,
            ),
        )

    def _remember_cancel(self, task_id: str, now: float) -> None:
        """Keep a delivered cancel for a minute (far longer than any reply in flight)."""
        self._canceled[task_id] = now
        if len(self._canceled) > 256:
            for tid in [t for t, at in self._canceled.items() if now - at > 60.0]:
                del self._canceled[tid]

    async def _heartbeat(self) -> None:
        await self.store.heartbeat(self.instance, self.options.lease_ms)
        before = set(self.live)
        self.live = [v.instance_id for v in await self.store.instances()]
        # ORCH-2604: at start, every SWEEP_ROUNDS-th round, and when an instance is gone
        sweep, self._rounds = self._rounds % SWEEP_ROUNDS == 0, self._rounds + 1
        if sweep or before - set(self.live) - {self.instance}:
            self.track(asyncio.get_running_loop().create_task(adopt_queued(self)))
        await self.drains.sync()  # a drain message missed (ORCH-2588)

    async def live_instances(self) -> list[str]:
        """The instances with a running heartbeat, as the store says now; the last
        heartbeat round's list when the store cannot be reached (ORCH-2543)."""
        with contextlib.suppress(StoreUnavailable):
            self.live = [v.instance_id for v in await self.store.instances()]
        return list(self.live)

    async def _heartbeat_loop(self) -> None:
        """A heartbeat every third of a lease: the instance is listed while it lives
        (ORCH-2543); the same round refreshes the list of live instances."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.lease_ms / 3000):  # ORCH-2817
                    await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                await self._heartbeat()
            except Exception:
                _log.warning("heartbeat of instance %s failed", self.instance, exc_info=True)

    # ---------------------------------------------------------------- takeover

    async def _reap_loop(self) -> None:
        period = self.options.lease_ms / 2000
        started = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):  # the reaper's period (ORCH-2817)
                    await self._stop.wait()
            if self._stop.is_set():
                return
            if time.monotonic() - started < 30 and not all(
                p.ready_replicas() for p in self.pools.values()
            ):
                continue  # just started: leave expired leases to an instance that can run them
            try:
                for reaped in await self.leases.reap_once():
                    outcome = "requeued"
                    if reaped.outcome == "claimed":
                        outcome = await self._claimed(reaped)
                    self.metrics.store_takeovers.add(
                        1, {"pool_id": reaped.task.pool, "outcome": outcome}
                    )
            except Exception:
                _log.exception("lease reaper failed")

    async def _claimed(self, r: Reaped) -> str:
        """A task whose instance died mid-stream. On the same replica, if this
        instance has it Ready, it continues (ORCH-2530): the original prompt plus the
        text streamed so far, the same seed, the remaining ``max_tokens``, token
        indices going on, announced by one ``metrics {resumed: true}``. Otherwise it
        ends with exactly one typed error under the claim's epoch (ORCH-2528)."""
        pool = self.pools.get(r.task.pool)
        replica = pool.replicas.get(r.replica_id or "") if pool is not None else None
        if pool is not None and replica is not None and replica.state.ready:
            sofar = continuation(await self.store.read(r.task_id))
            if sofar.ended:
                # canceled (or ended) between the claim and this read: the store holds
                # its one terminal; nothing to continue (ORCH-2567)
                self.leases.release(r.task_id)
                _log.info("task %s: claimed but already ended; not continued", r.task_id)
                return "ended"
            rec = self.tasks.get(r.task_id)
            if rec is None or rec.state != "queued":
                rec = record_of(r.task)
                self.tasks.add(rec)
            rec.takeover = sofar.started
            rec.tokens_out = rec.engine_tokens = sofar.next_index
            rec.text_out = [sofar.text]
            if rec.request.max_tokens > sofar.next_index:
                if self.go(pool, replica, rec, r.epoch, r.next_seq):
                    _log.warning("task %s taken over: continuing it here", r.task_id)
                    return "continued"
                return "ended"
        ev = ErrorEvent(
            code=ErrorCode.WORKER_RESET,
            message="the orchestratord instance that ran this task stopped",
            pool_id=r.task.pool,
            retriable=True,
        )
        with contextlib.suppress(Fenced, TaskEnded, KeyError):
            await self.store.append(r.task_id, r.epoch, [Event("error", msgspec.json.encode(ev))])
        self.leases.release(r.task_id)
        _log.warning("task %s taken over after its instance stopped: ended typed", r.task_id)
        return "ended"
