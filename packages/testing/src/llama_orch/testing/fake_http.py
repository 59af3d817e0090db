"""A tiny fake HTTP engine for faults a real engine cannot produce on demand.

``async with FakeHTTPEngine({"GET /health": handler, ...}) as fake:`` serves
the routes on ``127.0.0.1`` (a free port) and stops at exit; handlers parked
on :attr:`FakeHTTPEngine.release` return at exit, so teardown never hangs.
:func:`send_split` writes bytes in small pieces with a pause between them,
so the client sees one event spread over several reads.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType

from aiohttp import web

__all__ = ["FakeHTTPEngine", "Handler", "free_port_url", "send_split", "sse_response"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeHTTPEngine:
    def __init__(self, routes: Mapping[str, Handler]) -> None:
        self.routes = dict(routes)
        self.release = asyncio.Event()  # set at exit: handlers waiting on it return
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeHTTPEngine:
        app = web.Application()
        for route, handler in self.routes.items():
            method, path = route.split(" ", 1)
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def free_port_url() -> str:
    """A URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def sse_response(
    request: web.Request, status: int = 200, content_type: str = "text/event-stream"
) -> web.StreamResponse:
    resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
    await resp.prepare(request)
    return resp


async def send_split(resp: web.StreamResponse, data: bytes, piece: int = 3) -> None:
    """Write ``data`` in ``piece``-byte writes, yielding to the loop between them."""
    for i in range(0, len(data), piece):
        await resp.write(data[i : i + piece])
        await asyncio.sleep(0.002)  # a pause so the client reads each piece separately
