"""Keep-alive engine connections (ORCH-2720, ORCH-2721) over a fake engine that records
which client connection carried each request."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import web
from llama_orch.adapter_http import HttpAdapter, SSEStream
from llama_orch.core.adapter_api import (
    CANCELED,
    AdapterEvent,
    AdapterTarget,
    Finished,
    GenerateRequest,
    TokenChunk,
)
from llama_orch.core.errors import InvalidParams, OrchError, WorkerReset
from llama_orch.testing.fake_http import FakeHTTPEngine, sse_response


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
    """The toy wire of test_base.py: ``data: {"t": ...}`` per token, ``{"end": true}``."""

    engine = "toy"

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


async def _collect(it: AsyncIterator[AdapterEvent]) -> list[AdapterEvent]:
    return [ev async for ev in it]


def _req(task_id: str, n: int) -> GenerateRequest:
    return GenerateRequest(task_id=task_id, prompt="p", max_tokens=n, seed=1)


class Engine:
    """``POST /gen`` streams ``n`` tokens; ``drop`` names which request on a connection
    (1 = its first) is answered by closing the connection without a byte."""

    def __init__(self, *, drop: int | None = None, stall: bool = False) -> None:
        self.per_conn: Counter[int] = Counter()  # client port -> requests seen
        self.drop = drop
        self.stall = stall
        self.disconnects = 0
        self.fake = FakeHTTPEngine({"POST /gen": self.gen})

    async def gen(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        port = request.transport.get_extra_info("peername")[1]
        self.per_conn[port] += 1
        if self.per_conn[port] == self.drop:
            request.transport.close()  # the engine closed it: no answer at all
            raise ConnectionResetError
        n = (await request.json())["n"]
        resp = await sse_response(request)
        try:
            for i in range(n):
                await resp.write(b'data: {"t": " t%d"}\n\n' % i)
            if self.stall:  # until the client goes away (or the fake stops)
                while not _gone(request) and not self.fake.release.is_set():
                    await asyncio.sleep(0.01)
                if _gone(request):
                    self.disconnects += 1
                return resp
            await resp.write(b'data: {"end": true}\n\n')
        except ConnectionResetError:
            self.disconnects += 1
            raise
        return resp


def _gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def test_back_to_back_and_concurrent_generations_reuse_connections() -> None:
    """ORCH-2720: one connection serves back-to-back streams; concurrent streams open
    at most one connection each and return them to the pool; ORCH-2769: each request
    that went out on a pooled connection is counted as such."""
    engine = Engine()
    async with engine.fake as fake:
        adapter = Toy(fake.base_url)
        try:
            for i in range(5):
                events = await _collect(adapter.generate(_req(f"b{i}", n=3)))
                assert isinstance(events[-1], Finished) and events[-1].reason == "eos"
            assert list(engine.per_conn.values()) == [5]
            results = await asyncio.gather(
                *(_collect(adapter.generate(_req(f"c{i}", n=3))) for i in range(8))
            )
            assert all(r[-1] == Finished(reason="eos", tokens_generated=3) for r in results)
            assert len(engine.per_conn) <= 8 and sum(engine.per_conn.values()) == 13
            again = await _collect(adapter.generate(_req("after", n=2)))
            assert again[-1] == Finished(reason="eos", tokens_generated=2)
            assert len(engine.per_conn) <= 8  # served by a pooled connection
            assert adapter.stale_retries == 0
            # ORCH-2769: the connector tells every request but a connection's first
            assert adapter.pooled_requests == 14 - len(engine.per_conn)
        finally:
            await adapter.aclose()


async def test_stale_pooled_connection_is_retried_once_on_a_new_one() -> None:
    """ORCH-2721: the engine closes a pooled connection instead of answering: the
    request goes out again on a new connection and the stream completes."""
    engine = Engine(drop=2)
    async with engine.fake as fake:
        adapter = Toy(fake.base_url)
        try:
            await _collect(adapter.generate(_req("first", n=2)))
            events = await _collect(adapter.generate(_req("second", n=2)))
            assert events[-1] == Finished(reason="eos", tokens_generated=2)
            assert adapter.stale_retries == 1
            assert sorted(engine.per_conn.values()) == [1, 2]  # dropped one, new one
        finally:
            await adapter.aclose()


async def test_failure_on_a_new_connection_is_not_retried() -> None:
    """ORCH-2721: on a connection of its own the engine's failure is its answer."""
    engine = Engine(drop=1)
    async with engine.fake as fake:
        adapter = Toy(fake.base_url)
        try:
            with pytest.raises(WorkerReset):
                await _collect(adapter.generate(_req("only", n=2)))
            assert sum(engine.per_conn.values()) == 1 and adapter.stale_retries == 0
        finally:
            await adapter.aclose()


async def test_cancel_closes_the_connection_and_the_next_stream_opens_another() -> None:
    """ORCH-2720/3006: a cancelled stream's connection is dropped, never pooled."""
    engine = Engine(stall=True)
    async with engine.fake as fake:
        adapter = Toy(fake.base_url)
        try:
            events = []
            async for ev in adapter.generate(_req("c1", n=2)):
                events.append(ev)
                if len(events) == 2:
                    await adapter.cancel("c1")
            assert events[-1] == Finished(reason=CANCELED, tokens_generated=2)
            for _ in range(200):
                if engine.disconnects:
                    break
                await asyncio.sleep(0.01)
            assert engine.disconnects == 1  # the engine saw the disconnect
            engine.stall = False
            await _collect(adapter.generate(_req("c2", n=1)))
            assert list(engine.per_conn.values()) == [1, 1]
        finally:
            await adapter.aclose()


async def test_keepalive_zero_opens_a_connection_per_request() -> None:
    """ORCH-2721: ``keepalive_s: 0`` turns the pool off."""
    engine = Engine()
    async with engine.fake as fake:
        adapter = Toy(fake.base_url, keepalive_s=0)
        try:
            for i in range(3):
                await _collect(adapter.generate(_req(f"k{i}", n=1)))
            assert list(engine.per_conn.values()) == [1, 1, 1]
        finally:
            await adapter.aclose()
