"""SSE of a task this instance runs, served from what it stored (ORCH-2571, issue #13).

With a store, a stream reads the task's log at the store (ORCH-2526): one blocking
read per batch of events, and each event decoded again, although the instance that
runs the task wrote those very events a moment before. :class:`StoredLog` keeps, for
a task running here, the frames of the events the store *confirmed*: each append
answers the next seq, so the events of a confirmed batch have known seqs, and the
frames carry the same ``id:`` values a read at the store would give, on every
instance. A client therefore never sees an event that is not stored (as when it
reads the store): what it resumes elsewhere continues the same log.

The log stays exact only while this instance owns the task: when the store refuses a
write (fenced, canceled, ended elsewhere), the lease is lost, or the run stops
without its terminal (requeued), the log is *detached*, and a stream that was
following it continues from the store's log at the next seq (:func:`stream_frames`),
where the cancel's terminal or another instance's continuation is.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence

from llama_orch.core.sse import encode_event
from llama_orch.core.state_store import TERMINAL_KINDS, Event, StateStore

from .stored_frames import store_frames
from .tasks import KEEPALIVE_FRAME, KeepAlive

__all__ = ["StoredLog", "StoredLogs", "stream_frames"]


class StoredLog:
    """The stored events of one run on this instance, from seq ``base`` on."""

    __slots__ = ("_waiters", "base", "detached", "ended", "frames")

    def __init__(self, base: int) -> None:
        self.base = base  # the store's next seq when this instance got the task
        self.frames: list[bytes] = []
        self.ended = False  # the terminal is among the frames
        self.detached = False  # no longer exact here: read the store from the next seq
        self._waiters: list[asyncio.Future[object]] | None = None

    @property
    def next_seq(self) -> int:
        return self.base + len(self.frames)

    def stored(
        self,
        events: Sequence[Event],
        next_seq: int,
        frames: list[bytes] | None = None,
        at: int = -1,
    ) -> None:
        """The store took ``events`` as one batch and answered ``next_seq``. ``frames``:
        the frames the task record encoded for them, the first at index ``at`` of its
        log; taken as they are when that index is the store's seq (ORCH-2623)."""
        if self.ended or self.detached:
            return
        first = next_seq - len(events)
        if first != self.next_seq:  # not ours alone any more: never guess an id
            self.detach()
            return
        if frames is not None and at == first and len(frames) == len(events):
            self.frames += frames  # encode_event(kind, data, seq) already: the same bytes
        else:
            for i, ev in enumerate(events):
                self.frames.append(encode_event(ev.kind, ev.data, first + i))
        self.ended = events[-1].kind in TERMINAL_KINDS
        self._wake()

    def detach(self) -> None:
        if not self.ended and not self.detached:
            self.detached = True
            self._wake()

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, None
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    async def follow(
        self, start: int, keepalive_s: float, max_chunk: int | None
    ) -> AsyncIterator[tuple[bytes, int]]:
        """Frames from seq ``start`` (>= ``base``) with the seq after them, until the
        terminal or the detach; the frames available together are joined up to
        ``max_chunk`` bytes (None: one frame each); keep-alive comments while idle."""
        idx = start - self.base
        keepalive = KeepAlive(keepalive_s)  # one timer per reader (ORCH-2744)
        try:
            while True:
                frames = self.frames
                if idx < len(frames):
                    if max_chunk is None:
                        idx += 1
                        yield frames[idx - 1], self.base + idx
                        continue
                    end, size = idx, 0
                    while end < len(frames) and (end == idx or size < max_chunk):
                        size += len(frames[end])
                        end += 1
                    chunk = b"".join(frames[idx:end])
                    idx = end
                    yield chunk, self.base + idx
                    continue
                if self.ended or self.detached:
                    return
                waiter = asyncio.get_running_loop().create_future()
                if self._waiters is None:
                    self._waiters = []
                self._waiters.append(waiter)
                keepalive.park(waiter)
                await waiter  # a cancel ends the reader: ``close`` below
                if keepalive.woke(waiter):
                    if self._waiters is not None and waiter in self._waiters:
                        self._waiters.remove(waiter)
                    yield KEEPALIVE_FRAME, self.base + idx
        finally:
            keepalive.close()


class StoredLogs:
    """The stored logs of the runs on this instance (``live``), and of the last ended
    ones: a client that reads the stream after its ``202`` (often after a short task
    ended) is served from them too, within ``keep_frames`` frames in all and for
    ``keep_s`` seconds (less than the store's retention, so that a task id can never be
    used again while its ended log is kept here)."""

    def __init__(self, keep_s: float, keep_frames: int = 65_536) -> None:
        self.live: dict[str, StoredLog] = {}
        self._ended: OrderedDict[str, tuple[float, StoredLog]] = OrderedDict()
        self._kept, self._budget, self._keep_s = 0, keep_frames, keep_s

    def get(self, task_id: str) -> StoredLog | None:
        log = self.live.get(task_id)
        if log is not None:
            return log
        self._expire(time.monotonic())
        kept = self._ended.get(task_id)
        return kept[1] if kept is not None else None

    def close(self, task_id: str, log: StoredLog) -> None:
        """The run of ``log`` writes no more: kept if it holds the terminal, else
        detached (its streams go on from the store's log)."""
        log.detach()  # a no-op once the terminal is in it
        if self.live.get(task_id) is log:
            del self.live[task_id]
        if not log.ended or task_id in self._ended:
            return
        now = time.monotonic()
        self._ended[task_id] = (now, log)
        self._kept += len(log.frames)
        self._expire(now)

    def _expire(self, now: float) -> None:
        ended = self._ended
        while ended:
            at, oldest = next(iter(ended.values()))
            if self._kept <= self._budget and now - at <= self._keep_s:
                return
            ended.popitem(last=False)
            self._kept -= len(oldest.frames)


async def stream_frames(
    store: StateStore,
    task_id: str,
    start: int,
    keepalive_s: float,
    *,
    log: StoredLog | None,
    max_chunk: int | None,
) -> AsyncIterator[bytes]:
    """A task's SSE frames from seq ``start``: from ``log`` while it covers them and stays
    exact, then (or without it) from the store's log (ORCH-2526, ORCH-2571)."""
    nxt = start
    if log is not None and log.base <= nxt:
        async for chunk, after in log.follow(nxt, keepalive_s, max_chunk):
            nxt = after
            yield chunk
        if log.ended:
            return
    async for chunk in store_frames(store, task_id, nxt, keepalive_s, max_chunk=max_chunk):
        yield chunk
