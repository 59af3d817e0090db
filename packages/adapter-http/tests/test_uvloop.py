"""ORCH-2808: the stream client works on uvloop's event loop (orchestratord's
``--event-loop uvloop``): its own socket's connect (``add_writer``), ``TCP_NODELAY``,
an answer read to its end, a refused connect and the connect timeout. uvloop's
transports are not subclasses of ``asyncio.Transport`` (the check that failed the
bench's first uvloop run, session 18)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import uvloop
from llama_orch.adapter_http._lean import ConnectTimeout, StreamPool

T = TypeVar("T")


def _on_uvloop(make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        return await make()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


# before ORCH-2808 the stream failed and its server's close then hung: a bound of our own
@pytest.mark.timeout(30, method="thread")
def test_a_stream_on_uvloop_reads_its_answer_and_sets_nodelay() -> None:
    async def go() -> tuple[int, bytes, int, bool]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            pool = StreamPool(f"http://127.0.0.1:{port}", keepalive_s=30.0, connect_timeout_s=5.0)
            assert pool._family is not None  # the pool's own socket and connect (ORCH-2805)
            conn = await pool.acquire()
            assert conn.transport is not None
            nodelay = conn.transport.get_extra_info("socket").getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY
            )
            conn.start(pool.request("/x", b"{}", b""))
            status = await conn.head()
            body = await conn.read_all()
            conn.close()
            pool.close()
            return status, body, nodelay, conn.transport.is_closing()

    status, body, nodelay, closed = _on_uvloop(go)
    assert (status, body) == (200, b"hello world")
    assert nodelay and closed


def test_refused_and_timed_out_connects_on_uvloop() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    refused_port = probe.getsockname()[1]
    probe.close()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    filler = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
    try:

        async def go() -> None:
            pool = StreamPool(
                f"http://127.0.0.1:{refused_port}", keepalive_s=30.0, connect_timeout_s=5.0
            )
            with pytest.raises(ConnectionRefusedError):
                await pool.acquire()
            port = srv.getsockname()[1]
            slow = StreamPool(f"http://127.0.0.1:{port}", keepalive_s=30.0, connect_timeout_s=0.2)
            with pytest.raises(ConnectTimeout):
                await slow.acquire()

        _on_uvloop(go)
    finally:
        filler.close()
        srv.close()
