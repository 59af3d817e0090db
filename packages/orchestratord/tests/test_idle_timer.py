"""ORCH-2782: a kept-alive connection's idle timeout is a timer, with hypercorn's behaviour.

A tiny ASGI app served by hypercorn with orchestratord's connection class
(``coalesce_hypercorn_writes``), a raw client on one kept-alive connection.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from llama_orch.orchestratord.idle import IdleTimer
from llama_orch.orchestratord.writes import CoalescingTCPServer, coalesce_hypercorn_writes

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def served() -> AsyncIterator[Callable[[float], Awaitable[tuple[int, asyncio.Event]]]]:
    coalesce_hypercorn_writes()
    tasks: list[asyncio.Task[None]] = []
    stops: list[asyncio.Event] = []

    async def start(keep_alive_s: float) -> tuple[int, asyncio.Event]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        cfg = Config()
        cfg.bind = [f"fd://{sock.detach()}"]
        cfg.accesslog = None
        cfg.graceful_timeout = 5.0
        cfg.keep_alive_timeout = keep_alive_s
        stop = asyncio.Event()
        stops.append(stop)
        # hypercorn's Framework union does not name a plain ASGI callable (same protocol)
        tasks.append(asyncio.create_task(serve(app, cfg, shutdown_trigger=stop.wait)))  # type: ignore[arg-type]
        for _ in range(200):  # listening once a connect succeeds
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            w.close()
            return port, stop
        raise AssertionError("hypercorn did not listen")

    try:
        yield start
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


async def _answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    return head + await reader.readexactly(2)


async def test_an_idle_connection_closes_after_the_keep_alive_timeout(served: Any) -> None:
    """ORCH-2782: idle for keep_alive_timeout → closed; each request restarts the wait."""
    port, _ = await served(0.4)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    for _ in range(4):  # 4 requests 0.25 s apart: never idle for 0.4 s
        writer.write(REQUEST)
        assert (await _answer(reader)).endswith(b"ok")
        await asyncio.sleep(0.25)
    assert not reader.at_eof()
    writer.write(REQUEST)  # still open after 1 s, longer than one timeout
    assert (await _answer(reader)).endswith(b"ok")
    idle_from = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    waited = time.monotonic() - idle_from
    assert 0.3 <= waited < 2.0, waited
    assert idle_from - t0 > 0.9
    writer.close()


async def test_shutdown_closes_idle_connections_at_once(served: Any) -> None:
    """ORCH-2782: at shutdown an idle kept-alive connection closes without waiting for
    its keep-alive timeout (hypercorn's ``context.terminated``)."""
    port, stop = await served(30.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    assert (await _answer(reader)).endswith(b"ok")
    t0 = time.monotonic()
    stop.set()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert time.monotonic() - t0 < 2.0
    writer.close()


async def test_going_idle_creates_no_task(served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCH-2782: the connection's idle wait is a timer: requests on a kept-alive
    connection create no idle-timeout task (hypercorn's creates two per request)."""
    made: list[CoalescingTCPServer] = []
    real_init = CoalescingTCPServer.__init__

    def init(self: CoalescingTCPServer, *args: Any) -> None:
        real_init(self, *args)
        made.append(self)

    monkeypatch.setattr(CoalescingTCPServer, "__init__", init)
    port, _ = await served(30.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(3):
        writer.write(REQUEST)
        assert (await _answer(reader)).endswith(b"ok")
    idle_waits = [
        t
        for t in asyncio.all_tasks()
        if "_idle_timeout" in repr(t.get_coro()) or "wait_for" in repr(t.get_coro())
    ]
    assert idle_waits == []
    assert isinstance(made[-1].idle_task, IdleTimer)
    writer.close()
