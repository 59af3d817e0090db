"""The appends of every task this instance runs, sent to the store together (ORCH-2565).

Each running task's writer (:class:`TaskWriter`) coalesces its own events
while a write is in flight (ORCH-2524). On top of that, the batches that several
tasks hand over in the same turn of the event loop, or while a call is in flight,
leave in one ``append_many`` call: one round trip for all of them instead of one
per task. Each batch stays atomic on its own and gets its own answer (the next
seq, or the error ``append`` would raise), so fencing and the one-terminal rule
are the store's as before. A task's writer waits for its answer before it sends
its next batch, so its events keep their order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llama_orch.core.state_store import Event, Fenced, StateStore, StoreUnavailable, TaskEnded

from .stored_local import StoredLog
from .tasks import TaskRecord

if TYPE_CHECKING:
    from .stored import StoreBridge

__all__ = ["AppendBatcher", "TaskWriter"]

_log = logging.getLogger("llama_orch.orchestratord")


class AppendBatcher:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._waiting: list[tuple[str, int, Sequence[Event], asyncio.Future[int]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def append(self, task_id: str, epoch: int, events: Sequence[Event]) -> int:
        """:meth:`StateStore.append`, sent with the other tasks' waiting batches."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[int] = loop.create_future()
        self._waiting.append((task_id, epoch, events, answer))
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send(), name="store-appends")
        return await answer

    async def _send(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # the other tasks of this turn add their batches
            batch, self._waiting = self._waiting, []
            try:
                results = await self.store.append_many([(t, e, evs) for t, e, evs, _ in batch])
            except Exception as exc:  # e.g. StoreUnavailable: every batch gets it
                for *_, answer in batch:
                    if not answer.done():
                        answer.set_exception(exc)
                continue
            for (*_, answer), result in zip(batch, results, strict=True):
                if answer.done():  # its writer was cancelled meanwhile
                    continue
                if isinstance(result, BaseException):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)


class TaskWriter:
    """Writes one running task's events to the store under its epoch, coalescing
    the events that arrive while a write is in flight (ORCH-2524); what the store
    confirmed goes to the run's :class:`StoredLog`, which this instance's streams of
    the task read (ORCH-2571)."""

    def __init__(self, bridge: StoreBridge, rec: TaskRecord, epoch: int, log: StoredLog) -> None:
        self.bridge, self.rec, self.epoch, self.log = bridge, rec, epoch, log
        self.pending: list[Event] = []
        self.flushing: asyncio.Task[None] | None = None
        self.dead = False  # fenced, ended at the store, or lease lost: write no more
        self.released = False  # the run is over: nothing more will be put

    def kill(self) -> None:
        """Write no more: the store holds, or will hold, what others wrote."""
        self.dead = True
        self._close_log()

    def release(self) -> None:
        """The run is over; the log closes once the last write is answered."""
        self.released = True
        if self.flushing is None or self.flushing.done():
            self._close_log()

    def _close_log(self) -> None:
        self.bridge.logs.close(self.rec.task_id, self.log)

    def put(self, kind: str, data: bytes) -> None:
        if self.dead:
            return
        self.pending.append(Event(kind, data))
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush(), name=f"append-{self.rec.task_id}")
            self.bridge.track(self.flushing)

    async def _flush(self) -> None:
        tid = self.rec.task_id
        started = time.monotonic()
        while self.pending and not self.dead:
            batch, self.pending = self.pending, []
            try:
                with self.bridge.timed("append"):  # with other tasks' batches (ORCH-2565)
                    nxt = await self.bridge.appends.append(tid, self.epoch, batch)
            except (Fenced, TaskEnded, KeyError) as exc:
                # another instance owns it now, or it was canceled anywhere (ORCH-2525)
                reason = "fenced" if isinstance(exc, Fenced) else "ended"
                self.bridge.metrics.store_writes_refused.add(
                    1, {"pool_id": self.rec.pool_id, "reason": reason}
                )
                _log.info("task %s: the store refused an append (%s)", tid, type(exc).__name__)
                self.kill()
                self.bridge.lose(tid)
                return
            except StoreUnavailable:
                if (time.monotonic() - started) * 1000 > self.bridge.options.lease_ms:
                    _log.warning("task %s: store unreachable for a lease; stopping it", tid)
                    self.kill()
                    self.bridge.lose(tid)
                    return
                self.pending = batch + self.pending
                await asyncio.sleep(0.1)  # a retry back-off, not a poll of state
                continue
            self.log.stored(batch, nxt)
        if self.released or self.dead or self.log.ended:
            self._close_log()
