"""ORCH-2800: for an engine that closes after every stream, one connection opened
ahead of the next stream, over a raw asyncio engine that records, per connection,
when it was accepted, what it carried and when it ended."""

from __future__ import annotations

import asyncio
import time

import msgspec
from llama_orch.adapter_http import HttpAdapter, SSEStream
from llama_orch.core.adapter_api import (
    AdapterEvent,
    AdapterTarget,
    Finished,
    GenerateRequest,
    TokenChunk,
)
from llama_orch.core.errors import InvalidParams, OrchError


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


class Closing(HttpAdapter):
    """An engine like llama-server: it closes the connection after every stream."""

    engine = "toy"
    pool_streams = False

    def __init__(self, url: str, **options: object) -> None:
        super().__init__(AdapterTarget(replica_id="r", base_url=url, options=options))

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


class Pooling(Closing):
    pool_streams = True


_ANSWER = b"".join(
    (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n",
        *(
            b"%x\r\n%s\r\n" % (len(ev), ev)
            for ev in (b'data: {"t": "a"}\n\n', b'data: {"end": true}\n\n')
        ),
        b"0\r\n\r\n",
    )
)


class Conn(asyncio.Protocol):
    """One engine connection: answers one request, then closes (``drop_idle``: closes
    at once if no request arrives within that many seconds, as an engine's
    keep-alive timeout would)."""

    def __init__(self, engine: RawEngine) -> None:
        self.engine = engine
        self.accepted = time.monotonic()
        self.requested: float | None = None
        self.ended: float | None = None
        self.got = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.engine.conns.append(self)
        if self.engine.drop_idle is not None:
            asyncio.get_running_loop().call_later(self.engine.drop_idle, self._drop_if_idle)

    def _drop_if_idle(self) -> None:
        if self.requested is None and self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.got += data
        head, sep, body = self.got.partition(b"\r\n\r\n")
        if sep and self.requested is None and self.transport is not None:
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(body) >= length:
                self.requested = time.monotonic()
                self.transport.write(_ANSWER)
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = time.monotonic()


class RawEngine:
    def __init__(self, drop_idle: float | None = None) -> None:
        self.conns: list[Conn] = []
        self.drop_idle = drop_idle
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Conn(self), "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


def _req(task_id: str) -> GenerateRequest:
    return GenerateRequest(task_id=task_id, prompt="p", max_tokens=3, seed=1)


async def _one(adapter: HttpAdapter, task_id: str) -> list[AdapterEvent]:
    return [ev async for ev in adapter.generate(_req(task_id))]


async def _settle() -> None:
    for _ in range(20):  # the spare's connect completes within a few loop turns
        await asyncio.sleep(0.005)


async def test_the_next_stream_goes_out_on_a_connection_opened_before_it() -> None:
    engine = RawEngine()
    url = await engine.start()
    adapter = Closing(url)
    try:
        first = await _one(adapter, "t1")
        await _settle()
        asked = time.monotonic()
        second = await _one(adapter, "t2")
        await _settle()
        assert first == second
        assert second[0] == TokenChunk("a")
        carried = [c for c in engine.conns if c.requested is not None]
        assert len(carried) == 2
        # the second request's connection was accepted before the request was asked for
        assert carried[1].accepted < asked <= carried[1].requested  # type: ignore[operator]
        # and a third connection waits for the next stream: one spare, not more
        assert len(engine.conns) == 3
        assert engine.conns[2].requested is None and engine.conns[2].ended is None
        assert adapter.stale_retries == 0
    finally:
        await adapter.aclose()
        await _settle()
        engine.close()
    # closing the adapter closes the spare (the engine sees the disconnect)
    assert all(c.ended is not None for c in engine.conns)


async def test_a_stream_right_after_another_waits_for_the_spare_being_opened() -> None:
    engine = RawEngine()
    url = await engine.start()
    adapter = Closing(url)
    try:
        await _one(adapter, "t1")  # its end starts the spare's connect
        await _one(adapter, "t2")  # at once: takes that connection, opens no other
        await _settle()
        assert len(engine.conns) == 3
        assert [c.requested is not None for c in engine.conns] == [True, True, False]
    finally:
        await adapter.aclose()
        engine.close()


async def test_an_unused_spare_is_closed_after_keepalive_s() -> None:
    engine = RawEngine()
    url = await engine.start()
    adapter = Closing(url, keepalive_s=0.2)
    try:
        await _one(adapter, "t1")
        await _settle()
        spare = engine.conns[-1]
        assert spare.requested is None and spare.ended is None
        await asyncio.sleep(0.4)
        assert spare.ended is not None  # we closed it, unused
        before = len(engine.conns)
        assert (await _one(adapter, "t2"))[0] == TokenChunk("a")
        assert engine.conns[before].requested is not None  # a new connection carried it
        assert spare.requested is None
    finally:
        await adapter.aclose()
        engine.close()


async def test_a_spare_the_engine_closed_is_not_used_and_the_request_goes_through() -> None:
    engine = RawEngine(drop_idle=0.02)  # the engine's keep-alive timeout, very short
    url = await engine.start()
    adapter = Closing(url)
    try:
        for i in range(3):
            await _one(adapter, f"t{i}")
            await asyncio.sleep(0.1)  # the spare is closed by the engine meanwhile
        assert sum(c.requested is not None for c in engine.conns) == 3
        assert adapter.stale_retries == 0  # seen closed before use: not even tried
    finally:
        await adapter.aclose()
        engine.close()


async def test_a_spare_closed_while_the_request_goes_out_is_sent_again() -> None:
    engine = RawEngine()
    url = await engine.start()
    adapter = Closing(url)
    try:
        await _one(adapter, "t1")
        await _settle()
        spare = engine.conns[-1]
        assert spare.transport is not None
        # the engine closes the spare the moment the request is written (no byte of
        # an answer): the request is sent again on a new connection (ORCH-2721)
        spare.data_received = lambda data: spare.transport.close()  # type: ignore[method-assign,union-attr]
        events = await _one(adapter, "t2")
        assert events[0] == TokenChunk("a") and isinstance(events[-1], Finished)
        assert adapter.stale_retries == 1
    finally:
        await adapter.aclose()
        engine.close()


async def test_no_spare_with_keepalive_zero_or_for_an_engine_that_pools_streams() -> None:
    for adapter_type, options in ((Closing, {"keepalive_s": 0}), (Pooling, {})):
        engine = RawEngine()
        url = await engine.start()
        adapter = adapter_type(url, **options)
        try:
            for i in range(3):
                await _one(adapter, f"t{i}")
                await _settle()
            # one connection per request (the engine closes each), none opened ahead
            assert len(engine.conns) == 3, adapter_type
            assert all(c.requested is not None for c in engine.conns)
        finally:
            await adapter.aclose()
            engine.close()
