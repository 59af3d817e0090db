"""The adapter against a small fake llama-server (aiohttp.web on 127.0.0.1:0).

Covers the failure paths a real engine cannot be made to produce on demand
(ORCH-3003, ORCH-3005..ORCH-3007). The fixture stops the server at teardown
and releases any handler parked on purpose.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from llama_orch.adapters.llamacpp_http import LlamaCppHttpAdapter
from llama_orch.core.adapter_api import (
    AdapterEvent,
    AdapterTarget,
    Finished,
    GenerateRequest,
    TokenChunk,
)
from llama_orch.core.errors import DecodeTimeout, InvalidParams, WorkerReset

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def chunk(content: str, predicted: int) -> bytes:
    body = {
        "index": 0,
        "content": content,
        "tokens": [predicted],
        "stop": False,
        "id_slot": 0,
        "tokens_predicted": predicted,
        "tokens_evaluated": 3,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def final(predicted: int, stop_type: str = "limit") -> bytes:
    body = {
        "index": 0,
        "content": "",
        "tokens": [],
        "stop": True,
        "stop_type": stop_type,
        "tokens_predicted": predicted,
        "tokens_evaluated": 3,
        "timings": {},
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@dataclass
class FakeEngine:
    base_url: str
    release: asyncio.Event  # set at teardown: parked handlers return
    bodies: list[dict[str, object]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def adapter(self, **options: object) -> LlamaCppHttpAdapter:
        return LlamaCppHttpAdapter(
            AdapterTarget(replica_id="fake", base_url=self.base_url, options=options)
        )


@pytest.fixture
async def fake_engine() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[FakeEngine]]]:
    runners: list[web.AppRunner] = []
    engines: list[FakeEngine] = []

    async def start(routes: dict[str, Handler]) -> FakeEngine:
        app = web.Application()
        for route, handler in routes.items():
            method, path = route.split(" ", 1)
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        engine = FakeEngine(f"http://127.0.0.1:{sock.getsockname()[1]}", asyncio.Event())
        engines.append(engine)
        return engine

    try:
        yield start
    finally:
        for engine in engines:
            engine.release.set()
        for runner in runners:
            await runner.cleanup()


async def sse_response(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


def request(max_tokens: int = 8, task_id: str = "t1") -> GenerateRequest:
    return GenerateRequest(
        task_id=task_id,
        prompt="hi",
        max_tokens=max_tokens,
        seed=5,
        temperature=0.7,
        top_k=40,
        top_p=0.9,
        min_p=0.05,
        repeat_penalty=1.1,
        stop=("\n\n",),
        cache_prompt=False,
    )


async def drain(it: AsyncIterator[AdapterEvent]) -> list[AdapterEvent]:
    return [ev async for ev in it]


async def test_request_body_and_one_byte_writes(fake_engine) -> None:
    """ORCH-3005: n_predict always sent; a stream written 1 byte at a time, with
    comments and without [DONE], decodes to the exact text."""
    engine_box: list[FakeEngine] = []

    async def completion(request: web.Request) -> web.StreamResponse:
        engine_box[0].bodies.append(await request.json())
        resp = await sse_response(request)
        payload = (
            b": ping\n\n"
            + chunk(" Hel", 1)
            + b": ping\n\n"
            + chunk("lo", 2)
            + chunk("", 3)
            + chunk(" wörld", 4)
            + final(4, "word")
        )
        for i in range(len(payload)):
            await resp.write(payload[i : i + 1])
        await resp.write_eof()
        return resp

    engine = await fake_engine({"POST /completion": completion})
    engine_box.append(engine)
    a = engine.adapter()
    try:
        events = await drain(a.generate(request(max_tokens=8)))
    finally:
        await a.aclose()
    chunks = [e for e in events if isinstance(e, TokenChunk)]
    assert "".join(c.text for c in chunks) == " Hello wörld"
    assert [c.n_tokens for c in chunks] == [1, 1, 2]
    assert events[-1] == Finished(reason="stop", tokens_generated=4, prompt_tokens=3)
    body = engine.bodies[0]
    assert body == {
        "prompt": "hi",
        "n_predict": 8,
        "seed": 5,
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "stop": ["\n\n"],
        "cache_prompt": False,
        "stream": True,
        "return_progress": True,
    }


async def test_clean_close_without_stop_chunk_is_worker_reset(fake_engine) -> None:
    """ORCH-3007: a stream that ends without stop=true (e.g. a [DONE]-style end)."""

    async def completion(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(chunk(" a", 1) + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    engine = await fake_engine({"POST /completion": completion})
    a = engine.adapter()
    try:
        with pytest.raises(WorkerReset, match="before the final chunk"):
            await drain(a.generate(request()))
    finally:
        await a.aclose()


@pytest.mark.parametrize("stall_before_headers", [False, True])
async def test_stalled_engine_is_decode_timeout(fake_engine, stall_before_headers: bool) -> None:
    """ORCH-3007: no bytes for idle_timeout_s."""
    engine_box: list[FakeEngine] = []

    async def completion(request: web.Request) -> web.StreamResponse:
        if stall_before_headers:
            await engine_box[0].release.wait()
        resp = await sse_response(request)
        await resp.write(chunk(" a", 1))
        await engine_box[0].release.wait()
        return resp

    engine = await fake_engine({"POST /completion": completion})
    engine_box.append(engine)
    a = engine.adapter(idle_timeout_s=0.3)
    try:
        with pytest.raises(DecodeTimeout):
            await drain(a.generate(request()))
    finally:
        await a.aclose()


async def test_slow_but_steady_stream_is_not_a_timeout(fake_engine) -> None:
    """ORCH-3007: the idle timeout is per gap between bytes, not per stream.

    Tokens 0.1 s apart for 0.8 s in all, with idle_timeout_s=0.3: the lazily
    re-armed timer (issue #5) must not fire; then a stall ends it typed.
    """
    engine_box: list[FakeEngine] = []

    async def completion(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        for i in range(8):
            await resp.write(chunk(f" t{i}", i + 1))
            await asyncio.sleep(0.1)
        await engine_box[0].release.wait()  # then stall
        return resp

    engine = await fake_engine({"POST /completion": completion})
    engine_box.append(engine)
    a = engine.adapter(idle_timeout_s=0.3)
    got: list[str] = []
    try:
        with pytest.raises(DecodeTimeout):
            async for ev in a.generate(request()):
                assert isinstance(ev, TokenChunk)
                got.append(ev.text)
    finally:
        await a.aclose()
    assert got == [f" t{i}" for i in range(8)]


async def test_http_400_is_invalid_params(fake_engine) -> None:
    async def completion(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "error": {
                    "code": 400,
                    "message": "request (2000 tokens) exceeds the available "
                    "context size (1024 tokens)",
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": 2000,
                    "n_ctx": 1024,
                }
            },
            status=400,
        )

    engine = await fake_engine({"POST /completion": completion})
    a = engine.adapter()
    try:
        with pytest.raises(InvalidParams, match="exceeds the available context size"):
            await drain(a.generate(request()))
    finally:
        await a.aclose()


def endless_stream(engine_box: list[FakeEngine]) -> Handler:
    """Writes a token every 10 ms until the client goes away, then records it."""

    async def completion(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        n = 0
        try:
            while not engine_box[0].release.is_set():
                n += 1
                await resp.write(chunk(f" t{n}", n))
                await asyncio.sleep(0.01)  # pacing of a fake decoder, not a wait for an event
        except (ConnectionError, RuntimeError):
            engine_box[0].disconnected.set()
        return resp

    return completion


async def test_task_cancellation_drops_the_connection(fake_engine) -> None:
    """ORCH-3006: cancelling the consuming task closes the response too."""
    box: list[FakeEngine] = []
    engine = await fake_engine({"POST /completion": endless_stream(box)})
    box.append(engine)
    a = engine.adapter()
    three = asyncio.Event()

    async def consume() -> None:
        n = 0
        async for _ in a.generate(request(max_tokens=10_000)):
            n += 1
            if n == 3:
                three.set()

    try:
        task = asyncio.create_task(consume())
        await three.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(engine.disconnected.wait(), 2.0)
    finally:
        await a.aclose()


async def test_adapter_aclose_ends_open_streams(fake_engine) -> None:
    """aclose() drops open streams; their readers get WorkerReset instead of hanging."""
    box: list[FakeEngine] = []

    async def completion(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(chunk(" a", 1))
        await box[0].release.wait()
        return resp

    engine = await fake_engine({"POST /completion": completion})
    box.append(engine)
    a = engine.adapter()
    it = a.generate(request())
    assert await anext(it) == TokenChunk(" a", 1)
    blocked = asyncio.create_task(anext(it))
    await a.aclose()
    with pytest.raises(WorkerReset, match="adapter closed"):
        await asyncio.wait_for(blocked, 2.0)
