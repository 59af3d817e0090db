"""The appends of every task this instance runs, sent to the store together (ORCH-2565,
ORCH-2624).

Each running task's writer (:class:`TaskWriter`) collects its events while a batch of
it is in flight (ORCH-2524). The instance's one sender (:class:`AppendBatcher`) takes,
in each turn of the event loop, the waiting events of every writer with nothing in
flight and sends them in one ``append_many`` call: one round trip for all of them.
Each batch stays atomic on its own and gets its own answer (the next seq, or the error
``append`` would raise), so fencing and the one-terminal rule are the store's as
before. The sender hands each writer its answer directly: no asyncio task and no
future per batch (ORCH-2624). A writer sends its next batch only after its answer,
so its events keep their order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from llama_orch.core.state_store import Event, Fenced, StateStore, StoreUnavailable, TaskEnded

from .stored_local import StoredLog
from .tasks import TaskRecord

if TYPE_CHECKING:
    from .stored import StoreBridge

__all__ = ["AppendBatcher", "TaskWriter"]

_log = logging.getLogger("llama_orch.orchestratord")
_RETRY_S = 0.1  # the pause before a batch the store could not take is sent again


class AppendBatcher:
    """The instance's one sender of appends (ORCH-2565, ORCH-2624)."""

    def __init__(
        self,
        store: StateStore,
        *,
        timed: Callable[[str], AbstractContextManager[None]],
        track: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self.store = store
        self._timed, self._track = timed, track
        self._ready: list[TaskWriter] = []  # writers with events to send, none in flight
        self._sender: asyncio.Task[None] | None = None

    def want(self, writer: TaskWriter) -> None:
        """``writer`` has events waiting and no batch in flight: send them soon."""
        self._ready.append(writer)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(
                self._send(), name="store-appends"
            )
            self._track(self._sender)  # shutdown waits for the last answers

    async def _send(self) -> None:
        while self._ready:
            await asyncio.sleep(0)  # the other tasks of this turn add their events
            ready, self._ready = self._ready, []
            writers = [w for w in ready if w.take()]
            if not writers:
                continue
            try:
                with self._timed("append"):  # every writer's batch, one call (ORCH-2565)
                    results: list[int | BaseException] = list(
                        await self.store.append_many(
                            [(w.rec.task_id, w.epoch, w.sent) for w in writers]
                        )
                    )
            except Exception as exc:  # StoreUnavailable, or the call itself failed
                results = [exc] * len(writers)
            for w, result in zip(writers, results, strict=True):
                w.answered(result)


class TaskWriter:
    """Writes one running task's events to the store under its epoch, collecting the
    events that arrive while a batch is in flight (ORCH-2524); what the store
    confirmed goes to the run's :class:`StoredLog`, which this instance's streams of
    the task read (ORCH-2571), with the frames the task record encoded (ORCH-2623)."""

    __slots__ = (
        "_idle",
        "at",
        "bridge",
        "busy",
        "dead",
        "epoch",
        "frames",
        "log",
        "pending",
        "rec",
        "released",
        "sent",
        "sent_at",
        "sent_frames",
        "unreachable",
    )

    def __init__(self, bridge: StoreBridge, rec: TaskRecord, epoch: int, log: StoredLog) -> None:
        self.bridge, self.rec, self.epoch, self.log = bridge, rec, epoch, log
        self.pending: list[Event] = []
        self.frames: list[bytes] = []  # the record's frames of ``pending``
        self.at = -1  # the record's index of ``pending[0]``; -1: a frame is missing
        self.sent: list[Event] = []  # the batch in flight
        self.sent_frames: list[bytes] = []
        self.sent_at = -1
        # waiting at the sender, in flight, or waiting for a retry
        self.busy = False
        self.unreachable: float | None = None  # the first send the store did not take
        self.dead = False  # fenced, ended at the store, or lease lost: write no more
        self.released = False  # the run is over: nothing more will be put
        self._idle: asyncio.Future[None] | None = None

    def kill(self) -> None:
        """Write no more: the store holds, or will hold, what others wrote."""
        self.dead = True
        self._close_log()

    def release(self) -> None:
        """The run is over; the log closes once the last write is answered."""
        self.released = True
        if not self.busy:
            self._close_log()

    async def settled(self) -> None:
        """Until nothing of this writer waits or is in flight."""
        if self.busy:
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            await self._idle

    def _close_log(self) -> None:
        self.bridge.logs.close(self.rec.task_id, self.log)

    def put(self, kind: str, data: bytes, frame: bytes | None, index: int) -> None:
        if self.dead:
            return
        pending = self.pending
        if not pending:
            self.at = index
        pending.append(Event(kind, data))
        if frame is None:
            self.at = -1  # a packed ``queued`` event: this batch's frames are encoded
        else:
            self.frames.append(frame)
        if not self.busy:
            self.busy = True
            self.bridge.appends.want(self)

    def take(self) -> bool:
        """The sender takes the waiting events as this writer's batch; False: none."""
        if self.dead or not self.pending:
            self._settle()
            return False
        self.sent, self.pending = self.pending, []
        self.sent_frames, self.frames = self.frames, []
        self.sent_at = self.at
        return True

    def answered(self, result: int | BaseException) -> None:
        """The store's answer to the batch in flight (ORCH-2524, ORCH-2525)."""
        batch, frames, at = self.sent, self.sent_frames, self.sent_at
        self.sent, self.sent_frames = [], []
        tid = self.rec.task_id
        if isinstance(result, int):
            self.unreachable = None
            self.log.stored(batch, result, frames, at)
        elif isinstance(result, (Fenced, TaskEnded, KeyError)):
            # another instance owns it now, or it was canceled anywhere (ORCH-2525)
            reason = "fenced" if isinstance(result, Fenced) else "ended"
            self.bridge.metrics.store_writes_refused.add(
                1, {"pool_id": self.rec.pool_id, "reason": reason}
            )
            _log.info("task %s: the store refused an append (%s)", tid, type(result).__name__)
            self._stop()
            return
        elif isinstance(result, StoreUnavailable):
            now = time.monotonic()
            if self.unreachable is None:
                self.unreachable = now
            if (now - self.unreachable) * 1000 > self.bridge.options.lease_ms:
                _log.warning("task %s: store unreachable for a lease; stopping it", tid)
                self._stop()
                return
            self._again(batch, frames, at)
            return
        else:  # not an answer of the store's protocol: this batch is lost
            _log.error("task %s: an append failed", tid, exc_info=result)
        if self.dead or not self.pending:
            self._settle()
        else:
            self.bridge.appends.want(self)

    def _again(self, batch: list[Event], frames: list[bytes], at: int) -> None:
        """Send ``batch`` again after a pause, in front of what came since."""
        if self.pending and (at < 0 or self.at != at + len(batch)):
            at = -1
        self.pending = batch + self.pending
        self.frames = frames + self.frames
        self.at = at
        asyncio.get_running_loop().call_later(_RETRY_S, self.bridge.appends.want, self)

    def _stop(self) -> None:
        self.kill()
        self.bridge.lose(self.rec.task_id)
        self._settle()

    def _settle(self) -> None:
        """Nothing waits or is in flight any more."""
        self.busy = False
        if self.released or self.dead or self.log.ended:
            self._close_log()
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)
