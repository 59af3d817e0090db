"""What one client can make the server hold: head and body size, open streams, stalled readers.

``BodyLimit`` answers a head beyond ``limits.max_header_bytes`` with 431
(ORCH-8012), and a declared ``Content-Length`` beyond
``limits.max_body_bytes`` with 413 before reading anything, and stops a body
without a length at the same bound (ORCH-8010). ``TaskStream`` is the SSE
response: it counts open streams per tenant (ORCH-8013) and cuts a stream
whose client accepted nothing for ``limits.stream_stall_timeout_s`` (ORCH-8015).
The task itself keeps running: its event log is bounded by its own
``max_tokens`` (ORCH-1202), and a client that comes back resumes with
``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable

import msgspec
from llama_orch.core.errors import HeadersTooLarge, OrchError, RequestTooLarge
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .leanconn import APP_QUEUE, AppQueue
from .metrics import BatchedCounter

__all__ = ["RAW_SEND", "BodyLimit", "StreamCounter", "TaskStream"]

_log = logging.getLogger("llama_orch.orchestratord")
_json = msgspec.json.Encoder()


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes

    def _too_large(self, size: str) -> RequestTooLarge:
        return RequestTooLarge(f"request body of {size} bytes exceeds {self.max_bytes}")

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Not a coroutine (ORCH-2787): the bounds are checked at the call, which returns
        the inner application's awaitable (or the refusal's), so a request, an open
        stream for its whole life, holds no frame of this middleware."""
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if head > self.max_header_bytes:  # ORCH-8012: a head that arrived complete
            return _send_error(
                send,
                HeadersTooLarge(
                    f"request line and headers of {head} bytes exceed {self.max_header_bytes}"
                ),
            )
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    return _send_error(send, self._too_large(value.decode("latin-1")[:20]))
        return self.app(scope, self._bounded(receive), send)

    def _bounded(self, receive: Receive) -> Receive:
        """``receive`` that stops a body beyond the bound (one without a length, ORCH-8010)."""
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large(f"at least {seen}")  # rendered by the app's handler
            return message

        return bounded


async def _send_error(send: Send, err: OrchError) -> None:
    body = _json.encode(err.body())
    await send(
        {
            "type": "http.response.start",
            "status": err.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class StreamCounter:
    """Open SSE streams per tenant, and the counters of streams cut for a stalled reader
    (ORCH-8018) and refused at the tenant's limit (ORCH-8019), bumped only then."""

    def __init__(
        self, cuts: BatchedCounter | None = None, refusals: BatchedCounter | None = None
    ) -> None:
        self._open: Counter[str] = Counter()
        self._cuts = cuts
        self._refusals = refusals

    def __getitem__(self, tenant: str) -> int:
        return self._open.get(tenant, 0)

    def opened(self, tenant: str) -> None:
        self._open[tenant] += 1

    def closed(self, tenant: str) -> None:
        self._open[tenant] -= 1
        if self._open[tenant] <= 0:
            del self._open[tenant]

    def cut(self, tenant: str) -> None:
        """A stream of ``tenant`` cut for a stalled reader (ORCH-8018)."""
        if self._cuts is not None:
            self._cuts.add(1, {"tenant": tenant})

    def refused(self, tenant: str) -> None:
        """A stream of ``tenant`` refused at ``limits.max_streams_per_tenant`` (ORCH-8019)."""
        if self._refusals is not None:
            self._refusals.add(1, {"tenant": tenant})


RAW_SEND = "llama_orch.raw_send"
"""Scope key of the server's own ``send`` (set by the outermost middleware): a stream's
frames skip the per-message wrappers of the middlewares below it, which only act on
``http.response.start``."""


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class TaskStream(Response):
    """The SSE response of one task (ORCH-2751): pre-encoded frames written with the server's
    ``send``, one ASGI message per chunk (issue #20). Not a ``StreamingResponse``: with
    an ASGI 2.1 server that one runs an anyio task group per response to watch for the
    disconnect; here the request's queue of orchestratord's server calls back at the
    disconnect (ORCH-2772; under another server one plain task waits on ``receive``)
    and the writer is cancelled."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        task_id: str,
        tenant: str,
        counter: StreamCounter,
        stall_timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        # not Response.__init__: it would announce an empty body (content-length: 0)
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        )
        self.body_iterator = frames
        self._task_id = task_id
        self._tenant = tenant
        self._counter = counter
        self._stall_s = stall_timeout_s
        # Counted from here: the endpoint checked the limit with no await since.
        counter.opened(tenant)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # One coroutine for the whole stream (the writer's frame is held for its life)
        try:
            # One watchdog timer per stream instead of a timeout per write: a
            # per-chunk ``wait_for`` costs about 40 us on the token path, this costs
            # two attribute writes. The watchdog cancels this task when one write has
            # been blocked for ``stall_timeout_s``, i.e. within 1.25 times that.
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            assert task is not None
            raw: Send = scope.get(RAW_SEND, send)
            sending_since: float | None = None
            cut = ""
            period = self._stall_s / 4
            timer: asyncio.TimerHandle  # set below, before watch() first runs

            def watch() -> None:
                nonlocal cut, timer
                if sending_since is not None and loop.time() - sending_since >= self._stall_s:
                    cut = "stall"
                    task.cancel()
                    return
                timer = loop.call_later(period, watch)

            def gone(done: asyncio.Task[None]) -> None:
                nonlocal cut
                if not done.cancelled() and done.exception() is None and not cut:
                    cut = "gone"  # the client went away: stop reading the task's log
                    task.cancel()

            def on_message(message: Message) -> None:
                nonlocal cut
                if message["type"] == "http.disconnect" and not cut:
                    cut = "gone"
                    task.cancel()

            timer = loop.call_later(period, watch)
            # ORCH-2772: under orchestratord's server the request's queue tells the
            # disconnect (a callback, no task per stream); under another, a task waits on it
            queue = scope.get(APP_QUEUE)
            watcher: asyncio.Task[None] | None = None
            if isinstance(queue, AppQueue):
                queue.watch(on_message)
            else:
                watcher = loop.create_task(_until_disconnect(receive))
                watcher.add_done_callback(gone)
            try:
                sending_since = loop.time()
                # the start through the middlewares (correlation id, response-started flags)
                await send(
                    {"type": "http.response.start", "status": self.status_code,
                     "headers": self.raw_headers}
                )  # fmt: skip
                sending_since = None
                async for chunk in self.body_iterator:
                    # The server's send waits while the socket buffer is full: a reader
                    # that stopped reading blocks it here, with at most one chunk pending.
                    sending_since = loop.time()
                    await raw({"type": "http.response.body", "body": chunk, "more_body": True})
                    sending_since = None
                await raw({"type": "http.response.body", "body": b"", "more_body": False})
            except asyncio.CancelledError:
                if not cut:
                    raise
                task.uncancel()
                if cut == "stall":
                    self._counter.cut(self._tenant)
                    _log.warning(
                        "stream of task %s cut: its client read nothing for %.0f s",
                        self._task_id,
                        self._stall_s,
                        extra={"job_id": self._task_id},
                    )
                    if isinstance(queue, AppQueue) and queue.abort is not None:
                        queue.abort()  # ORCH-8024: the connection reset, its buffers dropped
                # no final chunk: the connection closes and the client sees a cut
            finally:
                cut = cut or "ended"  # a callback already scheduled must not cancel what follows
                timer.cancel()
                if isinstance(queue, AppQueue):
                    queue.watch(None)
                if watcher is not None:
                    watcher.remove_done_callback(gone)
                    watcher.cancel()
        finally:
            self._counter.closed(self._tenant)
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
