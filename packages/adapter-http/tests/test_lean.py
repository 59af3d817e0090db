"""The lean stream connection (ORCH-2745, ORCH-2746): framing however the bytes are
split, failures, and what an open stream keeps."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable

import aiohttp
import msgspec
import pytest
from llama_orch.adapter_http import HttpAdapter, SSEStream
from llama_orch.adapter_http._lean import StreamConn
from llama_orch.core.adapter_api import (
    AdapterEvent,
    AdapterTarget,
    Finished,
    GenerateRequest,
    TokenChunk,
)
from llama_orch.core.errors import InvalidParams, OrchError, WorkerReset


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = b""
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += bytes(data)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_CHUNKED = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    b"X-Long: " + b"x" * 300 + b"\r\n\r\n"
    b"5;ext=1\r\nhello\r\n19\r\n, world: data spans reads\r\n0\r\nX-Trailer: t\r\n\r\n"
)
_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
_UNTIL_CLOSE = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello until close"


def _conn() -> tuple[StreamConn, _Transport]:
    conn = StreamConn(asyncio.get_running_loop())
    transport = _Transport()
    conn.connection_made(transport)
    conn.start(b"POST / HTTP/1.1\r\n\r\n")
    return conn, transport


def _feed(conn: StreamConn, wire: bytes, size: int) -> None:
    for i in range(0, len(wire), size):
        conn.data_received(wire[i : i + size])


@pytest.mark.parametrize(
    ("wire", "body", "keep_alive"),
    [
        (_CHUNKED, b"hello, world: data spans reads", True),
        (_LENGTH, b"hello world", True),
        (_UNTIL_CLOSE, b"hello until close", False),
    ],
)
async def test_bodies_decode_however_the_bytes_are_split(
    wire: bytes, body: bytes, keep_alive: bool
) -> None:
    """ORCH-2746: chunked (extensions, trailers, after a 1xx), Content-Length and
    until-close bodies, split at every size from 1 byte to the whole answer."""
    for size in range(1, len(wire) + 1):
        conn, _ = _conn()
        _feed(conn, wire, size)
        if not keep_alive:
            conn.connection_lost(None)
        assert await conn.head() == 200
        assert await conn.read_all() == body, size
        assert conn.at_end and conn.keep_alive is keep_alive, size


async def test_connection_close_and_bytes_beyond_the_end_forbid_reuse() -> None:
    conn, _ = _conn()
    _feed(conn, _LENGTH.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n"), 1000)
    assert await conn.read_all() == b"hello world" and not conn.keep_alive
    conn, _ = _conn()
    _feed(conn, _LENGTH + b"HTTP/1.1 200", 1000)
    assert await conn.read_all() == b"hello world" and not conn.keep_alive


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX", "not followed by CRLF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "head too large"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5_000, "line too long"),
    ],
)
async def test_malformed_answers_fail_and_close(wire: bytes, match: str) -> None:
    """ORCH-2746: a malformed answer is a ConnectionError (WorkerReset to the stream's
    reader, ORCH-4102) and the connection is closed, never reused."""
    conn, transport = _conn()
    _feed(conn, wire, 7)
    with pytest.raises(ConnectionError, match=match):
        await conn.head()
        await conn.read_all()
    assert transport.closing and not conn.keep_alive


async def test_a_cut_delivers_the_bytes_before_it_then_fails() -> None:
    """ORCH-2746: text decoded before the connection ended is read first."""
    conn, _ = _conn()
    _feed(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nab", 9)
    conn.connection_lost(None)
    assert await conn.read() == b"helloab"
    with pytest.raises(ConnectionResetError, match="before the end of the answer"):
        await conn.read()


# -- through an adapter, against a raw engine ------------------------------------


class Event(msgspec.Struct):
    t: str = ""
    end: bool = False


class ToyStream(SSEStream[Event]):
    def __init__(self) -> None:
        super().__init__(msgspec.json.Decoder(Event), "toy")
        self.tokens_generated = 0

    def on_event(self, ev: Event) -> list[AdapterEvent]:
        if ev.end:
            self.finished = Finished(reason="eos", tokens_generated=self.tokens_generated)
            return [self.finished]
        self.tokens_generated += 1
        return [TokenChunk(ev.t)]


class Toy(HttpAdapter):
    engine = "toy"

    def __init__(self, url: str) -> None:
        super().__init__(AdapterTarget(replica_id="r", base_url=url, options={}))

    async def stream_request(self, req: GenerateRequest) -> tuple[str, object]:
        return "/gen", {"n": req.max_tokens}

    def new_decoder(self, req: GenerateRequest) -> ToyStream:
        return ToyStream()

    @staticmethod
    def error_table(status: int, body: bytes, what: str) -> OrchError:
        return InvalidParams(f"{what}: HTTP {status}", engine="toy")

    async def props(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    async def metrics(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class _RawEngine(asyncio.Protocol):
    """Answers every request with ``answer`` once the request's body arrived, then
    keeps the connection open (the engine still generating)."""

    def __init__(self, answer: Callable[[], bytes]) -> None:
        self.answer = answer
        self.got = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += data
        head, sep, body = self.got.partition(b"\r\n\r\n")
        if sep and self.transport is not None:
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(body) >= length:
                self.transport.write(self.answer())


async def _raw_engine(answer: Callable[[], bytes]) -> tuple[asyncio.Server, str]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _RawEngine(answer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def _req(task_id: str) -> GenerateRequest:
    return GenerateRequest(task_id=task_id, prompt="p", max_tokens=3, seed=1)


_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_a_bad_chunk_after_text_is_worker_reset_after_the_text() -> None:
    ev = b'data: {"t": "a"}\n\n'
    server, url = await _raw_engine(lambda: _HEAD + b"%x\r\n%s\r\nQQ\r\n" % (len(ev), ev))
    adapter = Toy(url)
    try:
        events: list[AdapterEvent] = []
        with pytest.raises(WorkerReset, match="bad chunk size"):
            async for e in adapter.generate(_req("bad")):
                events.append(e)
        assert events == [TokenChunk("a")]
    finally:
        await adapter.aclose()
        server.close()


async def test_an_open_stream_keeps_no_aiohttp_response_and_little_memory() -> None:
    """ORCH-2745: per open stream the adapter's transport keeps no aiohttp object and
    well under the ~9 KB aiohttp kept (the head's headers three times, five deques).
    Fails with the streams back on aiohttp (ClientResponse alive, ~9 KB each)."""
    ev = b'data: {"t": "a"}\n\n'
    server, url = await _raw_engine(lambda: _HEAD + b"%x\r\n%s\r\n" % (len(ev), ev))
    adapter = Toy(url)
    streams = []

    async def open_streams(n: int) -> None:
        for _ in range(n):
            it = adapter.generate(_req(f"s{len(streams)}"))
            assert await anext(it) == TokenChunk("a")
            streams.append(it)

    tracemalloc.start()
    try:
        await open_streams(8)
        gc.collect()
        before = tracemalloc.take_snapshot()
        await open_streams(64)
        gc.collect()
        after = tracemalloc.take_snapshot()
        assert not [o for o in gc.get_objects() if isinstance(o, aiohttp.ClientResponse)]
        ours = [
            tracemalloc.Filter(True, "*/aiohttp/*"),
            tracemalloc.Filter(True, "*/adapter_http/*"),
        ]
        grown = after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
        per_stream = sum(s.size_diff for s in grown) / 64
        assert per_stream < 1_500, [str(s) for s in grown[:8]]
    finally:
        tracemalloc.stop()
        for it in streams:
            await it.aclose()
        await adapter.aclose()
        server.close()
