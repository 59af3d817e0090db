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
* no ``Server`` header (a ``Date`` header, as hypercorn's), no access log, no proxy-header rewriting, no
  lifespan, no logging configuration of its own, no signal handlers (the caller's
  shutdown trigger decides): :func:`serve_uvicorn` drives ``uvicorn.Server``'s
  ``startup`` and ``shutdown`` itself instead of ``serve``.

What differs: uvicorn speaks HTTP/1.1 only (hypercorn also negotiates HTTP/2 over
TLS and h2c); the keep-alive timeout is uvicorn's own timer per idle connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import StartupError

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True

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

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # the next request's head begins
        self._head_bytes = 0


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
    protocol = type(
        "OrchHttpToolsProtocol", (BoundedHeadProtocol,), {"max_head_bytes": max_head_bytes}
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
        await ticker
        await server.shutdown(sockets=[sock])


def tls_context(certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
    """The server's TLS context, or None without ``server.certfile``."""
    if certfile is None:
        return None
    return _ssl_context(certfile, keyfile)
