"""Task records and their replayable SSE event logs (ORCH-1201, ORCH-1106).

Every accepted task owns a :class:`TaskRecord`. Its events are encoded once,
numbered from 0 (the SSE ``id:``), and kept until the record is evicted, so
a late client or one reconnecting with ``Last-Event-ID`` receives every
event exactly once. The log is bounded by the task's token budget.

Exactly one terminal event per task: :meth:`TaskRecord.finish` is the only
way to append ``end``/``error``; once it ran, every later append is dropped.
The phase lives in a core :class:`~llama_orch.core.task.Lifecycle` and moves
only through :meth:`dispatch`, :meth:`requeue` and :meth:`finish` (ORCH-2410);
each move wakes :meth:`TaskStore.wait_for` and the end sets ``ended`` (ORCH-2413).
That is what makes cancel race-free (ORCH-2004): the cancel handler finishes
the record *before* answering 204, so no token can follow.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.api import EndEvent, ErrorEvent, QueuedEvent, StreamEvent
from llama_orch.core.config import Priority
from llama_orch.core.errors import ErrorCode
from llama_orch.core.replica import ReplicaSetKey
from llama_orch.core.sse import encode_event
from llama_orch.core.task import Lifecycle, Phase

from ._task_run import RunFields, RunState

__all__ = ["KeepAlive", "TaskRecord", "TaskState", "TaskStore"]

TaskState = Literal["queued", "running", "completed", "failed", "canceled"]
_encoder = msgspec.json.Encoder()
KEEPALIVE_FRAME = b": keep-alive\n\n"  # an SSE comment: clients ignore it (ORCH-1962)
_KEEPALIVE = object()


# ORCH-2790: a ``queued`` event is kept in the log as one int (~48 B) holding its three
# numbers, not as its encoded frame (~150 B: a bytes object of ~110 B); a queued task gets
# one per position change (ORCH-1961), ~5 in the bench's memory stage. Fields, low bits
# first: queue_position (32 bits), predicted_start_ms (48), predicted_finish_ms + 1 (48; 0
# for none). An event whose numbers do not fit is kept encoded, as every other event.
_POS_BITS, _MS_BITS = 32, 48
_MS_MASK = (1 << _MS_BITS) - 1


def _pack_queued(event: QueuedEvent) -> int | None:
    pos, start, finish = event.queue_position, event.predicted_start_ms, event.predicted_finish_ms
    fin = 0 if finish is None else finish + 1
    if not (type(pos) is int and type(start) is int and type(fin) is int):
        return None
    # a finish of -1 would pack as 0, which reads back as "none": kept encoded instead
    if not (0 <= pos < 1 << _POS_BITS and 0 <= start <= _MS_MASK and 0 <= fin <= _MS_MASK):
        return None
    if finish is not None and fin == 0:
        return None
    return pos | start << _POS_BITS | fin << (_POS_BITS + _MS_BITS)


# ORCH-2747: the packed ``queued`` events a log begins with (a queued task's whole log)
# are kept as one bytes object, 16 bytes each (little-endian), not as an int object and
# a list slot each (~56 B): a queued task gets one per position or ETA move (ORCH-1961),
# every queued task one at each dispatch ahead of it and at each move of the service
# model's estimate, so their number grows with the time it waits.
_QUEUED_SIZE = 16


def _head_event(head: bytes, index: int) -> int:
    at = index * _QUEUED_SIZE
    return int.from_bytes(head[at : at + _QUEUED_SIZE], "little")


def _queued_frame(packed: int, index: int) -> bytes:
    """The frame of a packed ``queued`` event: the bytes its encoding at append gave."""
    fin = packed >> (_POS_BITS + _MS_BITS)
    event = QueuedEvent(
        queue_position=packed & ((1 << _POS_BITS) - 1),
        predicted_start_ms=(packed >> _POS_BITS) & _MS_MASK,
        predicted_finish_ms=None if fin == 0 else fin - 1,
    )
    return encode_event("queued", _encoder.encode(event), index)


class KeepAlive:
    """One keep-alive timer per reader of an event log (ORCH-1962, ORCH-2744). A wait
    parks its future here (:meth:`park`), which only notes when the wait began; the
    timer, armed at the first wait, fires ``every`` seconds after the wait in progress
    began and wakes it (:meth:`woke` then says True), or moves itself to that time, or,
    with no wait in progress, stays off until the next. One ``call_later`` and a cancel
    per wait left each cancelled timer, its arguments and its done future in the loop's
    heap for ``every`` seconds: ~7 per open stream at a token a second (issue #20)."""

    __slots__ = ("_every", "_loop", "_since", "_timer", "_waiter")

    def __init__(self, every: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._every = every
        self._since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[object] | None = None

    def park(self, waiter: asyncio.Future[object]) -> None:
        self._waiter, self._since = waiter, self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self._every, self._fire)

    def woke(self, waiter: asyncio.Future[object]) -> bool:
        """The parked wait ended: True when the keep-alive woke it."""
        self._waiter = None
        return waiter.result() is _KEEPALIVE

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiter = None

    def _fire(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # no wait in progress: armed by the next
            self._timer = None
            return
        due = self._since + self._every
        if self._loop.time() < due:  # the wait in progress began after the timer's
            self._timer = self._loop.call_at(due, self._fire)
            return
        self._timer = None
        waiter.set_result(_KEEPALIVE)


class Ended:
    """Set once with a task's terminal event (ORCH-2413): ``is_set``, ``set`` and ``wait``
    as :class:`asyncio.Event`'s. An ``asyncio.Event`` allocates its waiter deque up front
    (~0.7 KB per record); a queued task's record carries this instead, whose waiters exist
    only once someone waits (issue #20, RSS per queued task)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for w in waiters or ():
            if not w.done():
                w.set_result(None)

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


# the end flag of every record that ended before anyone asked for its own (ORCH-2743)
_ENDED = Ended()
_ENDED.set()


# slots: no per-record __dict__ (~1.5 KB of the ~3 KB a queued task's record held; issue #20);
# the run part's fields are properties of RunFields (ORCH-2791)
@dataclass(eq=False, slots=True)
class TaskRecord(RunFields):
    task_id: str
    pool_id: str
    engine: str
    priority: Priority
    request: GenerateRequest
    prompt_tokens: int  # the engine's count; 0 until known when not counted at admission
    prompt_counted: bool = True  # False: skipped at admission, taken from the engine (ORCH-1118)
    prompt_estimate: int = 0  # an uncounted prompt's tokens as admission estimated (ORCH-1993)
    session_id: str | None = None
    tenant: str = "default"
    deadline: float | None = None  # monotonic seconds (ORCH-1006, ORCH-1111)
    set_key: ReplicaSetKey | None = None  # pinned replica set (ORCH-1302), else free
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    replica_id: str | None = None
    queue_position: int = 0
    predicted_start_ms: int = 0
    created: float = field(default_factory=time.monotonic)
    created_wall: float = field(default_factory=time.time)
    dispatched: float | None = None
    first_token: float | None = None
    finished_at: float | None = None
    attempts: int = 0  # dispatches that failed before reaching the engine (ORCH-1117)
    pinned: bool = False  # set_key was fixed at admission, not by a dispatch
    tokens_out: int = 0
    expected_tokens: int | None = None  # the client's estimate, for forecasts (ORCH-1905)
    cost_per_token: float = 0.0  # of its pool and priority (ORCH-1906)
    # Hard preemption (ORCH-1902, ORCH-1903): text streamed so far (the resumption
    # continues from it; None until a resumption needs it, ORCH-2771), engine tokens
    # generated (engine time of earlier runs: the run part, ``_task_run``).
    text_out: list[str] | None = None
    engine_tokens: int = 0
    last_progress: float | None = None  # last engine event, for the watchdog (ORCH-1115)
    # The current run, for the service-time model (ORCH-1952): its first and last
    # token, busy slots summed over its token chunks (set per token: kept here, not in
    # the run part, ORCH-2791).
    run_first_token: float | None = None
    last_token: float | None = None
    busy_sum: int = 0
    run_chunks: int = 0
    # The ETA the last ``queued`` event said (ORCH-1961; its position is
    # ``queue_position``), None before the first, and when it was sent (ORCH-2743).
    queued_sent_eta: int | None = None
    queued_sent_at: float = 0.0
    # The finish the client holds (monotonic s: the 202's, then the last ``queued`` or
    # ``metrics`` event's, ORCH-2907).
    finish_held: float | None = None
    # Its guard limit (monotonic s): admission + f x the 202's finish (ORCH-2931).
    finish_guard: float | None = None
    # The guard's decision its 202 told it: held or not (ORCH-2937); None without one.
    told_hold: bool | None = None
    correlation_id: str | None = None  # X-Correlation-Id of the submission (ORCH-7031)
    trace_id: str | None = None  # its recording trace, 32 hex (ORCH-7045)
    # the submission's traceparent/tracestate, only with tracing on (ORCH-7043, ORCH-7046)
    trace_carrier: dict[str, str] | None = None
    api: str = "orchqueue"  # the API it came through: orchqueue | openai | anthropic (ORCH-9103)
    note: bytes | None = None  # a facade's own fields, stored with the task (ORCH-2592)
    # ``ended``: made when first asked for, else the shared set one at the end (ORCH-2743)
    _ended: Ended | None = None
    # Called after every phase change; the TaskStore that holds the record sets it.
    on_change: Callable[[TaskRecord], None] | None = None
    # With a state store, every appended event is also written there (ORCH-2524): its
    # kind, data, the frame encoded here (None for a packed ``queued`` event) and its
    # index in this log, so the run's stored log need not encode it again (ORCH-2623).
    sink: Callable[[str, bytes, bytes | None, int], None] | None = None
    # encoded frames; a ``queued`` event's as an int until read (ORCH-2790)
    _frames: list[bytes | int] = field(default_factory=list)
    # the packed ``queued`` events before the first other event, 16 bytes each; events
    # ``0 .. len(_head) // 16 - 1``, ``_frames`` holds the ones after (ORCH-2747)
    _head: bytes = b""
    # readers parked in frames(); None until the first one parks (a queued task has none)
    _waiters: list[asyncio.Future[object]] | None = None
    # run and preemption state (``RunFields``' attributes); None until the dispatch
    # (ORCH-2791)
    _run: RunState | None = None

    def __hash__(self) -> int:
        return hash(self.task_id)

    def run_part(self, make: bool = False) -> RunState | None:
        run = self._run
        if run is None and make:
            run = self._run = RunState()
        return run

    @property
    def ended(self) -> Ended:
        """Set with the terminal event (ORCH-2413): drain, shutdown and tests await it.
        A record holds one only once someone asked for it before the end (ORCH-2743)."""
        ended = self._ended
        if ended is None:
            ended = self._ended = Ended()
        return ended

    @property
    def session_key(self) -> tuple[str, str] | None:
        """Sessions belong to a tenant: the same ID names different sessions (ORCH-8005)."""
        return (self.tenant, self.session_id) if self.session_id else None

    @property
    def state(self) -> TaskState:
        return self.lifecycle.phase.value

    @property
    def terminal(self) -> bool:
        return self.lifecycle.terminal

    def dispatch(self, replica_id: str) -> None:
        """queued → running on ``replica_id`` (ORCH-2401)."""
        self.lifecycle.dispatch()
        self.replica_id = replica_id
        self._changed()

    def requeue(self) -> None:
        """running → queued: it will be dispatched again (ORCH-1117, ORCH-1902)."""
        self.lifecycle.requeue()
        self.replica_id, self.dispatched = None, None
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    @property
    def event_count(self) -> int:
        return len(self._head) // _QUEUED_SIZE + len(self._frames)

    def frames_so_far(self) -> list[bytes]:
        """The encoded events appended so far (a copy), without waiting."""
        return [self._frame(i) for i in range(self.event_count)]

    def _frame(self, index: int) -> bytes:
        head = len(self._head) // _QUEUED_SIZE
        if index < head:
            return _queued_frame(_head_event(self._head, index), index)
        frame = self._frames[index - head]
        return _queued_frame(frame, index) if isinstance(frame, int) else frame

    def append(self, event: StreamEvent) -> bool:
        """Append a non-terminal event; returns False (dropped) after the end."""
        if self.terminal:
            return False
        self._push(event)
        return True

    def finish(self, event: EndEvent | ErrorEvent) -> bool:
        """Append the one terminal event. Returns False if the task already ended."""
        if isinstance(event, ErrorEvent):
            outcome = Phase.FAILED
        elif event.reason == "canceled":
            outcome = Phase.CANCELED
        else:
            outcome = Phase.COMPLETED
        now = time.monotonic()
        if not self.lifecycle.end(outcome, now):
            return False
        if isinstance(event, ErrorEvent):
            self.error_code = event.code  # for the end log line and trace (ORCH-1967)
        self.finished_at = now
        self._push(event)
        if self._ended is None:
            self._ended = _ENDED
        else:
            self._ended.set()
        self._changed()
        return True

    def fail(
        self, code: ErrorCode, message: str, *, retriable: bool, retry_after_ms: int | None = None
    ) -> bool:
        """End the task with an ``error`` event carrying its engine and pool."""
        return self.finish(
            ErrorEvent(
                code=code,
                message=message,
                engine=self.engine,
                pool_id=self.pool_id,
                retriable=retriable,
                retry_after_ms=retry_after_ms,
            )
        )

    def _push(self, event: StreamEvent) -> None:
        tag = type(event).__struct_config__.tag
        assert isinstance(tag, str)
        packed = _pack_queued(event) if type(event) is QueuedEvent else None
        if packed is not None:  # ORCH-2790: encoded when read
            if self._frames:
                self._frames.append(packed)
            else:  # ORCH-2747: the log's leading queued events, 16 bytes each
                self._head += packed.to_bytes(_QUEUED_SIZE, "little")
            if self.sink is not None:
                self.sink(tag, _encoder.encode(event), None, self.event_count - 1)
        else:
            data = _encoder.encode(event)
            index = self.event_count
            frame = encode_event(tag, data, index)
            self._frames.append(frame)
            if self.sink is not None:
                self.sink(tag, data, frame, index)
        if self._waiters:  # wake the readers parked in frames(); none most of the time
            waiters, self._waiters = self._waiters, None
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def frames(
        self, start: int = 0, max_chunk: int = 65_536, keepalive_s: float | None = None
    ) -> AsyncIterator[bytes]:
        """Yield frames from index ``start`` on, waiting for new ones, until the end.

        Frames already available are joined into chunks of about ``max_chunk``
        bytes (at least one frame), so a late reader gets its replay in few
        writes and a stalled one pins at most one chunk (ORCH-8014). After
        ``keepalive_s`` without a frame it yields an SSE comment, so that
        proxies keep an idle stream open (ORCH-1962); one timer per reader
        (:class:`KeepAlive`, ORCH-2744), nothing on the token path.
        """
        idx = max(0, start)
        frames = self._frames
        keepalive = None
        try:
            while True:
                # the leading queued events (ORCH-2747): they grow only while
                # ``frames`` is empty, so ``n_head`` is fixed once a frame is there
                head = self._head
                n_head = len(head) // _QUEUED_SIZE
                if idx < n_head + len(frames):
                    end, size, parts = idx, 0, []
                    while end < n_head + len(frames) and (end == idx or size < max_chunk):
                        if end < n_head:
                            frame = _queued_frame(_head_event(head, end), end)
                        else:
                            kept = frames[end - n_head]
                            # a packed ``queued`` event (ORCH-2790) is encoded when read
                            frame = _queued_frame(kept, end) if isinstance(kept, int) else kept
                        parts.append(frame)
                        size += len(frame)
                        end += 1
                    idx = end
                    yield parts[0] if len(parts) == 1 else b"".join(parts)
                    continue
                if self.terminal:
                    return
                waiter = asyncio.get_running_loop().create_future()
                if self._waiters is None:
                    self._waiters = []
                self._waiters.append(waiter)
                if keepalive_s is None:
                    await waiter
                    continue
                if keepalive is None:
                    keepalive = KeepAlive(keepalive_s)
                keepalive.park(waiter)
                await waiter  # a cancel ends the reader: ``close`` below
                if keepalive.woke(waiter):
                    if self._waiters is not None and waiter in self._waiters:
                        self._waiters.remove(waiter)
                    yield KEEPALIVE_FRAME
        finally:
            if keepalive is not None:
                keepalive.close()


class TaskStore:
    """All known tasks; finished ones are evicted by age and count.

    Active tasks and per-tenant in-flight counts are kept incrementally, and
    finished tasks are evicted in finish order from a deque, so admission
    costs O(1) however many tasks are retained (found by profiling, issue #5).
    """

    def __init__(
        self,
        *,
        retention_s: float,
        max_tasks: int,
        on_finish: Callable[[TaskRecord], None] | None = None,
    ) -> None:
        self._on_finish = on_finish
        self._changed = asyncio.Event()  # replaced on every phase change (wait_for)
        # one bound method for every record's ``on_change``, not one per record (ORCH-2743)
        self._on_change = self._phase_changed
        self._tasks: dict[str, TaskRecord] = {}
        self._active: dict[str, TaskRecord] = {}
        self._finished: deque[TaskRecord] = deque()
        self._in_flight: Counter[str] = Counter()
        self._retention_s = retention_s
        self._max = max_tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, task_id: str) -> TaskRecord | None:
        return self._tasks.get(task_id)

    def add(self, record: TaskRecord) -> None:
        self._evict()
        self._tasks[record.task_id] = record
        if record.terminal:
            self._finished.append(record)
            return
        self._active[record.task_id] = record
        self._in_flight[record.tenant] += 1
        record.on_change = self._on_change

    def _phase_changed(self, record: TaskRecord) -> None:
        if record.terminal and self._active.pop(record.task_id, None) is not None:
            self._in_flight[record.tenant] -= 1
            if self._in_flight[record.tenant] <= 0:
                del self._in_flight[record.tenant]
            self._finished.append(record)
            if self._on_finish is not None:
                self._on_finish(record)  # the one "task ended" hook (ORCH-2412)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked after every phase change of any
        task (ORCH-2413); False when ``timeout`` seconds passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):  # ORCH-2817: never drops a cancel
                    await self._changed.wait()
            except TimeoutError:
                return predicate()
        return True

    def forget(self, task_id: str) -> None:
        """Drop an ended record now, so its id may be admitted again (a withdrawn
        admission at a state store, ORCH-2551)."""
        rec = self._tasks.get(task_id)
        if rec is not None and rec.terminal:
            del self._tasks[task_id]

    def detach(self, task_id: str) -> None:
        """Stop tracking a queued record whose task another instance now runs or ended
        (state store, ORCH-2563): it goes without an end of its own; status and streams
        read the store again."""
        rec = self._tasks.get(task_id)
        if rec is None or rec.state != "queued":
            return
        del self._tasks[task_id]
        if self._active.pop(task_id, None) is not None:
            self._in_flight[rec.tenant] -= 1
            if self._in_flight[rec.tenant] <= 0:
                del self._in_flight[rec.tenant]
        rec.on_change = None

    def active(self) -> list[TaskRecord]:
        return list(self._active.values())

    def records(self) -> list[TaskRecord]:
        """Every retained task, active or finished (admin listing, ORCH-5121)."""
        self._evict()
        return list(self._tasks.values())

    def in_flight(self, tenant: str) -> int:
        """Queued plus running tasks of ``tenant``."""
        return self._in_flight.get(tenant, 0)

    def in_flight_of(self, tenant: str) -> list[TaskRecord]:
        """The queued and running tasks of ``tenant`` (ORCH-1125)."""
        return [r for r in self._active.values() if r.tenant == tenant]

    def _evict(self) -> None:
        now = time.monotonic()
        finished = self._finished
        while finished:
            oldest = finished[0]
            assert oldest.finished_at is not None
            if len(self._tasks) < self._max and now - oldest.finished_at <= self._retention_s:
                break
            finished.popleft()
            if self._tasks.get(oldest.task_id) is oldest:
                del self._tasks[oldest.task_id]
