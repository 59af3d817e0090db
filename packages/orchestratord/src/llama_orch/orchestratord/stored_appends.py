"""The appends of every task this instance runs, sent to the store together (ORCH-2565).

Each running task's writer (``stored._Writer``) already coalesces its own events
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
from collections.abc import Sequence

from llama_orch.core.state_store import Event, StateStore

__all__ = ["AppendBatcher"]


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
