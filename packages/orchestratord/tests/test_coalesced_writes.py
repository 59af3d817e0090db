"""ORCH-2766: the bytes of one event-loop turn go out in one socket write.

A tiny ASGI app served by hypercorn with orchestratord's connection class; the
server's writes are counted by wrapping ``asyncio.StreamWriter.write``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from llama_orch.orchestratord.writes import coalesce_hypercorn_writes

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
HEAD = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}


def body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[[App], Awaitable[int]]]:
    coalesce_hypercorn_writes()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(app: App) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        cfg = Config()
        cfg.bind = [f"fd://{sock.detach()}"]
        cfg.accesslog = None
        cfg.graceful_timeout = 0.5
        # hypercorn's Framework union does not name a plain ASGI callable (same protocol)
        served = serve(app, cfg, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(served))
        for _ in range(200):  # listening once a connect succeeds
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            w.close()
            return port
        raise AssertionError("hypercorn did not listen")

    try:
        yield start
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


def count_server_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every server-side write: those whose bytes begin an HTTP answer or continue one."""
    written: list[bytes] = []
    original = asyncio.StreamWriter.write

    def write(self: asyncio.StreamWriter, data: bytes) -> None:
        if not bytes(data).startswith(b"GET "):  # the client's request
            written.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", write)
    return written


async def _request(port: int, close: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = b"Connection: close\r\n" if close else b""
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
    await writer.drain()
    return reader, writer


async def test_one_turn_of_messages_is_one_write(server, monkeypatch) -> None:
    """Head, three body messages and the end, sent without a pause: one write, and
    (Connection: close) written in full before the connection closes."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(HEAD)
        for part in (b"one ", b"two ", b"three"):
            await send(body(part))
        await send(body(b"", more=False))

    port = await server(app)
    written = count_server_writes(monkeypatch)
    reader, writer = await _request(port, close=True)
    answer = await asyncio.wait_for(reader.read(), 10)  # to EOF
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n")
    assert len(written) == 1, written


async def test_a_frame_is_not_held_for_a_later_turn(server, monkeypatch) -> None:
    """The first part reaches the client while the app waits for the client: the
    write happened in the turn it was sent (a stream's first token is not held)."""
    seen = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(HEAD)
        await send(body(b"first"))
        await seen.wait()  # only the client's reading of "first" lets the app go on
        await send(body(b"second", more=False))

    port = await server(app)
    written = count_server_writes(monkeypatch)
    reader, writer = await _request(port, close=False)
    got = b""
    while b"first" not in got:
        got += await asyncio.wait_for(reader.read(4096), 10)
    seen.set()
    while not got.endswith(b"0\r\n\r\n"):
        got += await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert b"6\r\nsecond\r\n" in got
    assert len(written) == 2, written  # head + first; second + terminator
