"""SSE frames of a task read from the state store's log (ORCH-2526, ORCH-2556, ORCH-2565).

One reader task per stream follows the store's log (``StateStore.tail``) into a
queue; the stream takes what is there. With ``max_chunk`` the frames already
read are joined into one chunk of about that many bytes, so a batch of events
that came in one store reply leaves in one write, as in-process streams do
(``TaskRecord.frames``); without it, one frame per item (a facade decodes
frame by frame). A keep-alive comment goes out after ``keepalive_s`` without an
event (ORCH-1962); its timer is armed only while the queue is empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llama_orch.core.sse import encode_event
from llama_orch.core.state_store import LoggedEvent, StateStore

from .tasks import KEEPALIVE_FRAME

__all__ = ["store_frames"]

_KEEPALIVE = object()  # the keep-alive timer's queue marker


async def store_frames(
    store: StateStore,
    task_id: str,
    start: int,
    keepalive_s: float,
    *,
    max_chunk: int | None = None,
) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[object] = asyncio.Queue()  # events, an exception, None: the end

    async def read() -> None:
        try:
            async for ev in store.tail(task_id, start - 1):
                queue.put_nowait(ev)
            queue.put_nowait(None)
        except Exception as exc:  # e.g. KeyError (expired), StoreUnavailable
            queue.put_nowait(exc)

    reader = asyncio.create_task(read(), name=f"tail-{task_id}")
    loop = asyncio.get_running_loop()
    item: object = _KEEPALIVE
    try:
        while True:
            timer = None
            if queue.empty():
                timer = loop.call_later(keepalive_s, queue.put_nowait, _KEEPALIVE)
            try:
                item = await queue.get()
            finally:
                if timer is not None:
                    timer.cancel()
            if isinstance(item, LoggedEvent):
                frame = encode_event(item.kind, item.data, item.seq)
                if max_chunk is None:
                    yield frame
                    continue
                parts, size = [frame], len(frame)
                item = _KEEPALIVE  # what follows the chunk, if anything but events
                while size < max_chunk and not queue.empty():
                    nxt = queue.get_nowait()
                    if not isinstance(nxt, LoggedEvent):
                        item = nxt
                        break
                    parts.append(encode_event(nxt.kind, nxt.data, nxt.seq))
                    size += len(parts[-1])
                yield b"".join(parts)
                if item is _KEEPALIVE:
                    continue  # data just went out: no keep-alive needed
            if item is _KEEPALIVE:
                yield KEEPALIVE_FRAME
            elif item is None:
                return
            elif isinstance(item, BaseException):
                raise item
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
