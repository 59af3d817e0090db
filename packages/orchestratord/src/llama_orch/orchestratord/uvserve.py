"""orchestratord's HTTP listener under uvicorn with httptools (ORCH-2810..2815).

``server.http_server: uvicorn`` runs the same ASGI application as hypercorn
does, on the socket ``serve`` bound, with uvicorn's httptools protocol (llhttp,
HTTP/1.1 parsed in C) instead of hypercorn's h11 (pure Python). What hypercorn
gives and uvicorn does not on its own is added here:

* a bound on a head still arriving (ORCH-8012): llhttp has none and uvicorn adds
  none, so :class:`BoundedHeadProtocol` counts the bytes a connection received
  since its current request began and answers 431 and closes once they exceed
  ``limits.max_header_bytes`` before the head is complete (a complete head is the
  application's, as under hypercorn);
* no ``Server`` header (a ``Date`` header, as hypercorn's), no access log, no
  proxy-header rewriting, no lifespan, no logging configuration of its own, no
  signal handlers (the caller's shutdown trigger decides): :func:`serve_uvicorn`
  drives ``uvicorn.Server``'s ``startup`` and ``main_loop`` itself instead of
  ``serve``, and shuts down on events, not on uvicorn's 0.1 s timers (ORCH-6262).

What differs: uvicorn speaks HTTP/1.1 only (hypercorn also negotiates HTTP/2 over
TLS and h2c); the keep-alive timeout is uvicorn's own timer per idle connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import StartupError
from .leanconn import APP_QUEUE, AppQueue, reset_transport
from .writes import TurnJoiner

__all__ = ["BoundedHeadProtocol", "serve_uvicorn"]

_log = logging.getLogger("llama_orch.orchestratord")

KEEP_ALIVE_S = 30.0  # as hypercorn's keep_alive_timeout in serve.py
GRACEFUL_S = 1.0  # as hypercorn's graceful_timeout: after the drain, open requests get this
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools connection; a head still arriving is bounded by
    ``max_head_bytes`` (ORCH-8012), the way hypercorn's h11 bounds its incomplete
    event. The count is of bytes received while a head is incomplete, checked after
    each read is parsed: a read that completes the head is not refused here."""

    max_head_bytes = 16384  # set per server by serve_uvicorn (a subclass)
    coalesce = True  # ORCH-2814: writes of one loop turn in one send
    # set per server by serve_uvicorn: set when the server's last connection is lost
    all_closed: asyncio.Event | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._app_queue: AppQueue | None = None

    # uvicorn narrows asyncio.Protocol's BaseTransport parameter to Transport
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.coalesce:
            transport = cast(asyncio.Transport, CoalescingTransport(transport, self.loop))
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes:
            if not self.transport.is_closing():
                self.transport.write(_TOO_LARGE)
                self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # ORCH-2815: the SSE writer watches this for the disconnect (a callback, as under
        # hypercorn's AppQueue, ORCH-2772) instead of a task per stream waiting on receive
        self._app_queue = queue = AppQueue()
        queue.abort = functools.partial(reset_transport, self.transport)  # ORCH-8024
        cast(dict[str, Any], self.scope)[APP_QUEUE] = queue

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete and self._app_queue is not None:
            self._app_queue.put_nowait({"type": "http.disconnect"})
        if self.all_closed is not None and not self.connections:
            self.all_closed.set()  # what a shutdown waits on (ORCH-6262)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # the next request's head begins
        self._head_bytes = 0


class CoalescingTransport(TurnJoiner):
    """The part of :class:`asyncio.Transport` uvicorn's connection uses, with the writes
    of one loop turn joined into one, written by ``call_soon`` at the end of the turn
    (ORCH-2814, as ``writes.CoalescingWriter`` does for hypercorn, ORCH-2766): the head,
    the body and the chunked terminator of a response go out in one ``send``. Flow
    control stays the transport's (it pauses the protocol when its buffer fills);
    ``close`` writes what is pending first."""

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._transport = transport

    def flush(self) -> None:
        data = self._take()
        if data is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """What is pending dropped, the transport aborted (ORCH-8024)."""
        self._drop()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)


def _ssl_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    """TLS 1.2 or newer with the configured PEM files (ORCH-8030)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ValueError) as exc:
        raise StartupError(f"TLS certfile/keyfile unusable: {exc}") from exc
    return ctx


async def serve_uvicorn(
    app: ASGIApp,
    sock: socket.socket,
    *,
    max_head_bytes: int,
    ssl_context: ssl.SSLContext | None,
    shutdown_trigger: Callable[[], Awaitable[object]],
) -> None:
    """Serve ``app`` on the listening ``sock`` until ``shutdown_trigger`` returns (the
    caller drains its streams in it), then close the listener and the connections,
    giving open requests :data:`GRACEFUL_S` before they are cancelled."""
    all_closed = asyncio.Event()
    protocol = type(
        "OrchHttpToolsProtocol",
        (BoundedHeadProtocol,),
        {"max_head_bytes": max_head_bytes, "all_closed": all_closed},
    )
    config = uvicorn.Config(
        app,
        http=protocol,
        ws="none",
        lifespan="off",
        interface="asgi3",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=True,  # as hypercorn: RFC 9110 asks an origin server with a clock for it
        timeout_keep_alive=int(KEEP_ALIVE_S),
        timeout_graceful_shutdown=int(GRACEFUL_S),
    )
    config.load()
    config.ssl = ssl_context  # ours: the same checks and errors as hypercorn's path
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # "off": nothing runs
    await server.startup(sockets=[sock])
    # uvicorn's own loop: the Date header once a second, until should_exit
    ticker = asyncio.get_running_loop().create_task(server.main_loop())
    try:
        await shutdown_trigger()
    finally:
        server.should_exit = True
        ticker.cancel()  # its next tick is up to 0.1 s away and only refreshes the Date
        await asyncio.gather(ticker, return_exceptions=True)
        await _shutdown(server, sock, all_closed)
        # ORCH-2818: the requests still running after the grace were cancelled; they
        # end here, before the caller's exit stack closes what they may still use
        # (adapters, the store)
        await asyncio.gather(*server.server_state.tasks, return_exceptions=True)


async def _shutdown(server: uvicorn.Server, sock: socket.socket, all_closed: asyncio.Event) -> None:
    """What ``uvicorn.Server.shutdown`` does with lifespan off, on events instead of its
    timers (ORCH-6262): it sleeps 0.1 s after asking the connections to close and then
    polls every 0.1 s for them and for the request tasks, so every stop took 0.1-0.2 s
    with nothing open. Here: stop accepting, close idle connections and let busy ones
    finish their response (uvicorn's ``shutdown`` of each), wait for the last connection
    and request task to end, and cancel the requests still running after
    :data:`GRACEFUL_S`."""
    state = server.server_state
    for listener in server.servers:
        listener.close()
    sock.close()
    for connection in list(state.connections):
        connection.shutdown()
    try:
        async with asyncio.timeout(GRACEFUL_S):
            while state.connections:
                all_closed.clear()
                if state.connections:
                    await all_closed.wait()
            while state.tasks:
                await asyncio.wait(set(state.tasks))
            for listener in server.servers:
                await listener.wait_closed()
    except TimeoutError:
        _log.error("cancelling %d request(s) still running after the grace", len(state.tasks))
        for task in state.tasks:
            task.cancel(msg="still running after the shutdown's grace")


def tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """The server's TLS context, or None without ``server.certfile``."""
    if certfile is None:
        return None
    return _ssl_context(certfile, keyfile)
