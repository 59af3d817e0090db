"""ORCH-2805: a new stream connection to an IP address connects its own socket; a
host name and TLS keep asyncio's ``create_connection``. Failures and cancellation
close the socket; the connect timeout is ``ConnectTimeout``."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from llama_orch.adapter_http._lean import ConnectTimeout, StreamPool


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def engine() -> AsyncIterator[int]:
    """A server answering every request with a 200 and a 5-byte body."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The keyword arguments of each ``loop.create_connection`` call, and its host."""
    seen: list[dict[str, Any]] = []
    real = asyncio.BaseEventLoop.create_connection

    async def spy(
        self: asyncio.BaseEventLoop, factory: Any, host: Any = None, port: Any = None, **kw: Any
    ) -> Any:
        seen.append({"host": host, **kw})
        return await real(self, factory, host, port, **kw)

    monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", spy)
    yield seen


async def test_an_ip_address_connects_its_own_socket_with_nodelay(
    engine: int, calls: list[dict[str, Any]]
) -> None:
    pool = StreamPool(f"http://127.0.0.1:{engine}", keepalive_s=30.0, connect_timeout_s=5.0)
    conn = await pool.acquire()
    assert [c["host"] for c in calls] == [None] and isinstance(calls[0]["sock"], socket.socket)
    assert conn.transport is not None and not conn.reused
    sock = conn.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # as asyncio's (ORCH-2816)
    conn.start(pool.request("/x", b"{}", b""))
    assert await conn.head() == 200
    assert await conn.read_all() == b"hello"
    conn.close()
    pool.close()


async def test_a_host_name_keeps_asyncios_connect(engine: int, calls: list[dict[str, Any]]) -> None:
    pool = StreamPool(f"http://localhost:{engine}", keepalive_s=30.0, connect_timeout_s=5.0)
    try:
        conn = await pool.acquire()
    except OSError:
        pytest.skip("localhost does not reach 127.0.0.1 here")
    assert [c["host"] for c in calls] == ["localhost"]
    conn.close()


@pytest.mark.parametrize(
    ("url", "own"),
    [
        ("http://127.0.0.1:1", True),
        ("http://[::1]:1", True),
        ("http://engine.internal:1", False),
        ("https://127.0.0.1:1", False),  # TLS: asyncio's handshake
        ("http://[fe80::1%25eth0]:1", False),  # a scoped address: asyncio's
    ],
)
def test_which_urls_connect_their_own_socket(url: str, own: bool) -> None:
    pool = StreamPool(url, keepalive_s=30.0, connect_timeout_s=5.0)
    assert (pool._family is not None) is own


async def test_a_refused_connect_is_an_os_error_and_leaks_no_socket() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    pool = StreamPool(f"http://127.0.0.1:{port}", keepalive_s=30.0, connect_timeout_s=5.0)
    before = _fds()
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()
    assert _fds() == before


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full: the next connect waits (SYNs dropped)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    try:
        yield port
    finally:
        filler.close()
        srv.close()


async def test_the_connect_timeout_is_connect_timeout_and_leaks_no_socket(
    full_backlog: int,
) -> None:
    pool = StreamPool(f"http://127.0.0.1:{full_backlog}", keepalive_s=30.0, connect_timeout_s=0.2)
    before = _fds()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ConnectTimeout, match=r"in 0\.2s"):
        await pool.acquire()
    assert 0.15 <= loop.time() - t0 < 2.0
    assert _fds() == before


async def test_a_cancelled_connect_closes_its_socket(full_backlog: int) -> None:
    pool = StreamPool(f"http://127.0.0.1:{full_backlog}", keepalive_s=30.0, connect_timeout_s=30.0)
    before = _fds()
    task = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0.05)
    assert _fds() == before + 1  # the socket waiting for its connect
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _fds() == before
