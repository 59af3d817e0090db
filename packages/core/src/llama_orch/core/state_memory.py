"""The ``memory`` state store: one process, built on the core's queue, quotas and placement.

It is the reference the ``valkey`` backend is held to (ORCH-2502): the serving
order comes from :class:`~llama_orch.core.queue.AdmissionQueue`, quotas from
:class:`~llama_orch.core.quota.Quotas` and placement from
:func:`~llama_orch.core.placement.next_dispatch`, so the two backends share
one definition of WRR/DRR/EDF, the full policies, the token buckets and the
placement rules. Time comes from the injected clock (seconds).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import cast

import msgspec

from ._memory_control import ControlChannels
from ._memory_runs import RunEntry, RunIndex, run_entry
from ._memory_task import TaskRecord, rotation
from .config import Priority
from .placement import Chooser, ReplicaView, next_dispatch
from .placement import Orphaned as _Orphaned
from .queue import PRIORITIES, AdmissionQueue
from .quota import Quotas
from .state_store import (
    TERMINAL_KINDS,
    Admitted,
    Canceled,
    CancelOutcome,
    Control,
    Dispatched,
    DuplicateTask,
    Event,
    Fenced,
    InstanceView,
    LoggedEvent,
    Orphaned,
    PlacementHint,
    PoolDrain,
    Preemption,
    Reaped,
    SlotView,
    StateOptions,
    StateStore,
    StoreConfig,
    TaskEnded,
    TaskSpec,
    TaskView,
    canceled_terminal,
    displaced_terminal,
    draining_refusal,
    orphaned_terminal,
    queued_event,
    queued_note_due,
)

__all__ = ["MemoryStateStore"]


class MemoryStateStore(StateStore):
    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._config: StoreConfig | None = None
        self._queues: dict[str, AdmissionQueue[str]] = {}
        self._quotas: Quotas | None = None
        self._replicas: dict[str, dict[str, SlotView]] = {}
        self._busy: dict[str, dict[str, int]] = {}
        self._tasks: dict[str, TaskRecord] = {}
        self._inflight: dict[str, int] = {}
        self._sessions: dict[str, tuple[str, str, float]] = {}
        self._epoch = 0
        self._ended: deque[tuple[float, str]] = deque()  # (ended_at, task_id), for retention
        self._bells: dict[str, int] = {}
        self._bell_events: dict[str, asyncio.Event] = {}
        self._channels = ControlChannels(clock)  # ORCH-2540, ORCH-2543
        self._drains: dict[str, float] = {}  # pool -> drain deadline (ORCH-2585)
        self._preempted: dict[str, tuple[str, float]] = {}  # pool -> (head, until) (ORCH-2597)
        self._runs = RunIndex()  # the running tasks for preempt (ORCH-2617)

    @classmethod
    def from_options(cls, options: StateOptions) -> MemoryStateStore:
        return cls()

    # ------------------------------------------------------------ config
    async def configure(self, config: StoreConfig) -> None:
        self._config = config
        weights = {t: c.weight for t, c in config.tenants.items()}
        for pool, p in config.pools.items():
            if pool not in self._queues:
                self._queues[pool] = AdmissionQueue(
                    p.capacity, p.full_policy, p.priority_weights, weights
                )
        self._quotas = Quotas(config.tenants, config.default_tenant, config.priorities)

    async def set_replicas(self, pool: str, replicas: Sequence[SlotView]) -> None:
        self._replicas[pool] = {r.replica_id: r for r in replicas}
        busy = self._busy.setdefault(pool, {})
        for r in replicas:
            busy.setdefault(r.replica_id, 0)
        self._ring(pool)

    # ------------------------------------------------------------ admission
    async def submit(self, task: TaskSpec, admitter: str | None = None) -> Admitted:
        return self._submit(task, ring=True, admitter=admitter)

    async def submit_dispatch(
        self, task: TaskSpec, instance: str, lease_ms: int, hint: PlacementHint | None = None
    ) -> tuple[Admitted, Dispatched | Orphaned | None]:
        # one step, as valkey's (ORCH-2569); the instance is the admitter (ORCH-2603)
        admitted = self._submit(task, ring=False, admitter=instance)
        step = await self.dispatch(task.pool, instance, lease_ms, hint)
        placed = step.task.task_id if isinstance(step, Dispatched) else None
        if isinstance(step, Orphaned):
            placed = step.task_id
        if placed != task.task_id:  # the task just admitted still waits: tell the others
            self._ring(task.pool)
        return admitted, step

    def _submit(self, task: TaskSpec, *, ring: bool, admitter: str | None) -> Admitted:
        assert self._quotas is not None, "configure() first"
        self._purge()
        if task.task_id in self._tasks:
            raise DuplicateTask(f"task {task.task_id!r} already exists")
        queue = self._queues[task.pool]
        if task.pool in self._drains:  # before quotas and capacity (ORCH-2586)
            raise draining_refusal(task.pool)
        now = self._clock()
        self._quotas.admit(task.tenant, task.priority, self._inflight.get(task.tenant, 0), now)
        displaced = queue.push(
            task.task_id, task.priority, tenant=task.tenant, deadline=task.deadline_ms
        )
        for d in displaced:
            self._end(self._tasks[d.item], displaced_terminal(d.code))
        self._tasks[task.task_id] = TaskRecord(task, admitter=admitter)
        self._inflight[task.tenant] = self._inflight.get(task.tenant, 0) + 1
        if ring:
            self._ring(task.pool)
        return Admitted(
            queue_position=queue.position(task.task_id),
            displaced=[(d.item, d.code) for d in displaced],
        )

    # ------------------------------------------------------------ dispatch
    def _views(self, pool: str, loads: Mapping[str, int] | None = None) -> list[ReplicaView[str]]:
        busy, loads = self._busy.get(pool, {}), loads or {}
        return [
            # This store keys replica sets by an opaque string (SlotView.set_key);
            # placement is generic in its key. Load: the dispatcher's hint (ORCH-2578).
            ReplicaView(
                r.replica_id,
                r.set_key,
                r.ready,
                r.slots,
                busy.get(r.replica_id, 0),
                loads.get(r.replica_id, 0),
            )
            for r in self._replicas.get(pool, {}).values()
        ]

    def _session(self, name: str | None) -> tuple[str, str] | None:
        if name is None:
            return None
        got = self._sessions.get(name)
        if got is None or got[2] <= self._clock():
            return None
        return got[0], got[1]

    def _pin(self, task_id: str) -> str | None:
        spec = self._tasks[task_id].spec
        if spec.pin is not None:
            return spec.pin
        s = self._session(spec.session)
        return s[0] if s else None

    def _affinity(self, task_id: str) -> str | None:
        s = self._session(self._tasks[task_id].spec.session)
        return s[1] if s else None

    async def dispatch(
        self, pool: str, instance: str, lease_ms: int, hint: PlacementHint | None = None
    ) -> Dispatched | Orphaned | None:
        if pool in self._drains:  # a drained pool starts nothing (ORCH-2586)
            return None
        queue = self._queues[pool]
        views = self._views(pool, hint.loads if hint is not None else None)
        chooser_of: Callable[[str], Chooser[str]] | None = None
        if hint is not None and hint.round_robin:  # ORCH-2578: the instance's rotation
            rotate = rotation(hint.rotate_after)
            chooser_of = lambda _t: rotate  # noqa: E731
        step = next_dispatch(queue, views, self._pin, self._affinity, chooser_of)
        if step is None:
            return None
        rec = self._tasks[step.item]
        if isinstance(step, _Orphaned):
            self._end(rec, orphaned_terminal())
            return Orphaned(task_id=step.item)
        # what the instance's placement policy chooses among (ORCH-2573): the chosen
        # set's Ready replicas, free slots before this reservation, by id
        candidates = sorted(
            (v.replica_id, v.free) for v in views if v.ready and v.set_key == step.set_key
        )
        affinity = self._affinity(step.item)
        self._epoch += 1
        now = self._clock()
        rec.state, rec.epoch, rec.owner = "running", self._epoch, instance
        rec.replica, rec.lease_until = step.replica_id, now + lease_ms / 1000
        rec.dispatch_seq, rec.set_key = len(rec.log), step.set_key
        self._runs.add(step.item, run_entry(rec))
        busy = self._busy.setdefault(pool, {})
        busy[step.replica_id] = busy.get(step.replica_id, 0) + 1
        if rec.spec.session is not None:
            assert self._config is not None
            # the key is the string the replicas were registered with (see _views)
            self._sessions[rec.spec.session] = (
                step.set_key,
                step.replica_id,
                now + self._config.session_ttl_ms / 1000,
            )
        return Dispatched(
            task=rec.spec,
            replica_id=step.replica_id,
            set_key=step.set_key,
            epoch=rec.epoch,
            requeues=rec.requeues,
            next_seq=rec.dispatch_seq,
            candidates=candidates,
            affinity=affinity,
        )

    # ------------------------------------------------------------ event log
    def _owned(self, task_id: str, epoch: int) -> TaskRecord:
        rec = self._tasks[task_id]
        if rec.state == "ended":
            raise Canceled(task_id) if rec.canceled else TaskEnded(task_id)
        if rec.state != "running" or rec.epoch != epoch:
            raise Fenced(f"task {task_id!r}: epoch {epoch} is not {rec.epoch}")
        return rec

    async def append(self, task_id: str, epoch: int, events: Sequence[Event]) -> int:
        rec = self._owned(task_id, epoch)
        for n, ev in enumerate(events):
            if ev.kind in TERMINAL_KINDS and n != len(events) - 1:
                raise ValueError("a terminal event must be the last of its batch")
        for ev in events:
            if ev.kind in TERMINAL_KINDS:
                self._end(rec, ev)
            else:
                self._log(rec, ev)
        return len(rec.log)

    def _log(self, rec: TaskRecord, ev: Event) -> None:
        rec.log.append(LoggedEvent(len(rec.log), ev.kind, ev.data))
        if rec.changed is not None:
            rec.changed.set()
            rec.changed = None

    def _end(self, rec: TaskRecord, terminal: Event) -> None:
        """The one path to a terminal: log it, free the slot and quota, drop the lease."""
        spec = rec.spec
        if rec.state == "queued":
            self._queues[spec.pool].remove(spec.task_id)
        elif rec.state == "running" and rec.replica is not None:
            self._runs.remove(spec.task_id, run_entry(rec))
            busy = self._busy[spec.pool]
            busy[rec.replica] = max(0, busy.get(rec.replica, 0) - 1)
            if len(self._queues[spec.pool]):  # only a queued task can use it (ORCH-2570)
                self._ring(spec.pool)
        rec.state, rec.lease_until, rec.ended_at = "ended", None, self._clock()
        self._ended.append((rec.ended_at, spec.task_id))
        left = self._inflight.get(spec.tenant, 1) - 1
        self._inflight[spec.tenant] = max(0, left)
        self._log(rec, terminal)

    async def read(self, task_id: str, after: int = -1) -> list[LoggedEvent]:
        self._purge()
        return list(self._tasks[task_id].log[after + 1 :])

    async def tail(
        self, task_id: str, after: int = -1, *, poll_s: float = 1.0
    ) -> AsyncIterator[LoggedEvent]:
        rec = self._tasks[task_id]
        while True:
            if len(rec.log) > after + 1:
                for ev in rec.log[after + 1 :]:
                    yield ev
                    after = ev.seq
                    if ev.kind in TERMINAL_KINDS:
                        return
                # events appended while this generator was suspended at a yield woke
                # nobody (no waiter yet): look again before waiting
                continue
            if rec.changed is None:
                rec.changed = asyncio.Event()
            await rec.changed.wait()

    # ------------------------------------------------------------ cancel, leases
    async def cancel(self, task_id: str, terminal: Event | None = None) -> CancelOutcome:
        if terminal is None and task_id in self._tasks:  # tokens_out: the log's, this step
            log = self._tasks[task_id].log
            terminal = canceled_terminal(sum(1 for e in log if e.kind == "token"))
        rec = self._tasks[task_id]
        if rec.state == "ended":
            return "ended"
        was, owner = rec.state, rec.owner
        rec.canceled = True
        self._end(rec, terminal or canceled_terminal())
        if was == "running" and owner is not None:  # tell the owner now (ORCH-2540)
            self._channels.send(owner, Control("cancel", task_id))
        return "queued" if was == "queued" else "running"

    async def requeue(self, task_id: str, epoch: int) -> None:
        rec = self._owned(task_id, epoch)
        if len(rec.log) > rec.dispatch_seq and rec.spec.pin is None:
            # it streamed since its dispatch (a preemption): its continuation must come
            # from the same replica set (ORCH-1902, ORCH-2580)
            rec.spec = msgspec.structs.replace(rec.spec, pin=rec.set_key)
        self._back_to_queue(rec)

    def _back_to_queue(self, rec: TaskRecord) -> None:
        spec = rec.spec
        if rec.replica is not None:
            self._runs.remove(spec.task_id, run_entry(rec))
            busy = self._busy[spec.pool]
            busy[rec.replica] = max(0, busy.get(rec.replica, 0) - 1)
        self._epoch += 1
        rec.state, rec.epoch, rec.owner, rec.replica, rec.lease_until = (
            "queued",
            self._epoch,
            None,
            None,
            None,
        )
        rec.requeues += 1
        self._queues[spec.pool].push(
            spec.task_id, spec.priority, tenant=spec.tenant, deadline=spec.deadline_ms, front=True
        )
        self._ring(spec.pool)

    async def renew(self, instance: str, leases: Mapping[str, int], lease_ms: int) -> list[str]:
        now, lost = self._clock(), []
        for task_id, epoch in leases.items():
            rec = self._tasks.get(task_id)
            if rec is None or rec.state != "running" or rec.epoch != epoch or rec.owner != instance:
                lost.append(task_id)
            else:
                rec.lease_until = now + lease_ms / 1000
        return lost

    async def reap(self, instance: str, lease_ms: int, max_requeues: int = 2) -> list[Reaped]:
        now, out = self._clock(), []
        expired = [
            r
            for r in self._tasks.values()
            if r.state == "running" and r.lease_until is not None and r.lease_until <= now
        ]
        for rec in sorted(expired, key=lambda r: (r.lease_until, r.spec.task_id)):
            # no event since the dispatch (`queued` events before it do not count)
            if len(rec.log) == rec.dispatch_seq and rec.requeues < max_requeues:
                self._back_to_queue(rec)
                out.append(
                    Reaped(
                        task_id=rec.spec.task_id,
                        outcome="requeued",
                        epoch=rec.epoch,
                        task=rec.spec,
                        next_seq=0,
                    )
                )
                continue
            self._runs.remove(rec.spec.task_id, run_entry(rec))
            self._epoch += 1
            rec.epoch, rec.owner, rec.lease_until = self._epoch, instance, now + lease_ms / 1000
            self._runs.add(rec.spec.task_id, run_entry(rec))
            out.append(
                Reaped(
                    task_id=rec.spec.task_id,
                    outcome="claimed",
                    epoch=rec.epoch,
                    task=rec.spec,
                    next_seq=len(rec.log),
                    replica_id=rec.replica,
                )
            )
        return out

    # ------------------------------------------------------------ doorbell
    def _ring(self, pool: str) -> None:
        self._bells[pool] = self._bells.get(pool, 0) + 1
        ev = self._bell_events.pop(pool, None)
        if ev is not None:
            ev.set()

    async def bell(self, pool: str) -> str:
        return str(self._bells.get(pool, 0))

    async def wait_bell(self, pool: str, cursor: str, timeout_s: float) -> str:
        if str(self._bells.get(pool, 0)) == cursor:
            ev = self._bell_events.setdefault(pool, asyncio.Event())
            try:
                async with asyncio.timeout(timeout_s):  # ORCH-2817: never drops a cancel
                    await ev.wait()
            except TimeoutError:
                pass
        return str(self._bells.get(pool, 0))

    # ------------------------------------------------------------ control, liveness
    async def control_cursor(self, instance: str) -> str:
        return self._channels.cursor(instance)

    async def wait_control(
        self, instance: str, cursor: str, timeout_s: float
    ) -> tuple[str, list[Control]]:
        return await self._channels.wait(instance, cursor, timeout_s)

    async def heartbeat(self, instance: str, ttl_ms: int) -> None:
        self._channels.heartbeat(instance, ttl_ms)

    async def instances(self) -> list[InstanceView]:
        return self._channels.instances()

    # ------------------------------------------------------------ views
    async def task(self, task_id: str) -> TaskView | None:
        self._purge()
        rec = self._tasks.get(task_id)
        if rec is None:
            return None
        return TaskView(
            task=rec.spec,
            state=rec.state,
            epoch=rec.epoch,
            owner=rec.owner,
            next_seq=len(rec.log),
            requeues=rec.requeues,
            replica_id=rec.replica,
            canceled=rec.canceled,
        )

    async def positions(self, task_ids: Sequence[str]) -> dict[str, int]:
        out = {}
        for tid in task_ids:
            rec = self._tasks.get(tid)
            if rec is not None and rec.state == "queued":
                out[tid] = self._queues[rec.spec.pool].position(tid)
        return out

    async def announce_queued(
        self, notes: Sequence[tuple[str, int]], interval_ms: int
    ) -> dict[str, int]:
        now, out = self._clock(), {}
        for tid, eta in notes:
            rec = self._tasks.get(tid)
            if rec is None or rec.state != "queued":
                continue
            pos = out[tid] = self._queues[rec.spec.pool].position(tid)
            if queued_note_due(rec.queued_note, pos, eta, now, interval_ms):
                rec.queued_note = (pos, eta, now)
                self._log(rec, queued_event(pos, eta))
        return out

    async def expire(self, task_id: str, terminal: Event) -> bool:
        rec = self._tasks.get(task_id)
        if rec is None or rec.state != "queued":
            return False
        self._end(rec, terminal)
        return True

    async def busy(self, pool: str) -> dict[str, int]:
        return {k: v for k, v in self._busy.get(pool, {}).items() if v}

    async def session_pin(self, session: str) -> tuple[str, str] | None:
        return self._session(session)

    # ------------------------------------------------------------ placement (ORCH-2574)
    async def move(self, task_id: str, epoch: int, replica_id: str) -> bool:
        rec = self._owned(task_id, epoch)
        spec = rec.spec
        target = self._replicas.get(spec.pool, {}).get(replica_id)
        busy = self._busy.setdefault(spec.pool, {})
        if (
            rec.replica is None
            or len(rec.log) != rec.dispatch_seq  # the run has begun: too late
            or target is None
            or not target.ready
            or target.set_key != rec.set_key
        ):
            return False
        if replica_id == rec.replica:
            return True
        if busy.get(replica_id, 0) >= target.slots:
            return False
        busy[rec.replica] = max(0, busy.get(rec.replica, 0) - 1)
        busy[replica_id] = busy.get(replica_id, 0) + 1
        self._runs.remove(spec.task_id, run_entry(rec))
        rec.replica = replica_id
        self._runs.add(spec.task_id, run_entry(rec))
        if spec.session is not None and spec.session in self._sessions:
            set_key, _, until = self._sessions[spec.session]
            self._sessions[spec.session] = (set_key, replica_id, until)
        if len(self._queues[spec.pool]):  # the freed slot may serve a queued task
            self._ring(spec.pool)
        return True

    async def head(self, pool: str) -> tuple[Priority, str | None] | None:
        queue = self._queues[pool]
        tid, meta = queue.peek(), queue.peek_meta()
        if tid is None or meta is None:
            return None
        return cast(Priority, meta[0]), self._pin(tid)

    async def preempt(
        self, pool: str, instance: str, replicas: Sequence[str], ttl_ms: int
    ) -> Preemption | None:
        queue, now = self._queues[pool], self._clock()
        head, meta = queue.peek(), queue.peek_meta()
        if head is None or meta is None:
            return None
        chosen = self._preempted.get(pool)
        if chosen is not None and chosen[0] == head and chosen[1] > now:
            return None  # one victim per head (ORCH-2597)
        pin, below = self._pin(head), PRIORITIES[PRIORITIES.index(meta[0]) + 1 :]
        victim = self._runs.victim(
            pool,
            below,
            replicas,
            instance,
            set(self._channels.live()),
            lambda tid: pin is None or self._tasks[tid].set_key == pin,
        )
        if victim is None:
            return None
        victim_id, owner = victim
        self._preempted[pool] = (head, now + ttl_ms / 1000)
        if owner != instance:
            self._channels.send(owner, Control("preempt", victim_id, pool))
        return Preemption(task_id=victim_id, owner=owner)

    def run_index(self) -> list[tuple[str, RunEntry]]:
        """The running tasks as the index holds them, sorted: (id, (pool, priority,
        replica, owner, epoch)) (ORCH-2617; what tests read)."""
        return sorted(self._runs.entries())

    async def queued(self, pool: str) -> list[str]:
        return sorted(self._queues[pool].queued())

    async def unattended(self, pool: str) -> list[str]:
        live = set(self._channels.live())
        return sorted(t for t in self._queues[pool].queued() if self._tasks[t].admitter not in live)

    def _purge(self) -> None:
        """Forget ended tasks past their retention (ORCH-2517)."""
        if self._config is None:
            return
        horizon = self._clock() - self._config.event_log_retention_ms / 1000
        ended = self._ended
        while ended and ended[0][0] <= horizon:
            self._tasks.pop(ended.popleft()[1], None)

    # ------------------------------------------------------------ pool drains
    def _drain_view(self, pool: str) -> PoolDrain:
        left = round((self._drains[pool] - self._clock()) * 1000)
        return PoolDrain(pool=pool, deadline_in_ms=max(0, left))

    async def drain_pool(self, pool: str, deadline_ms: int) -> PoolDrain:
        if pool not in self._drains:  # a second drain keeps the first deadline
            self._drains[pool] = self._clock() + deadline_ms / 1000
            self._channels.broadcast(Control("drain", "", pool))
        live = (
            tid
            for tid, r in self._tasks.items()
            if r.spec.pool == pool and r.state in ("queued", "running")
        )
        return msgspec.structs.replace(self._drain_view(pool), tasks=tuple(sorted(live)))

    async def undrain_pool(self, pool: str) -> bool:
        if self._drains.pop(pool, None) is None:
            return False
        self._channels.broadcast(Control("undrain", "", pool))
        self._ring(pool)
        return True

    async def drains(self) -> list[PoolDrain]:
        return [self._drain_view(pool) for pool in sorted(self._drains)]

    async def end_queued(self, pool: str, terminal: Event) -> list[str]:
        queued = sorted(
            tid for tid, r in self._tasks.items() if r.spec.pool == pool and r.state == "queued"
        )
        for tid in queued:
            self._end(self._tasks[tid], terminal)
        return queued
