"""The shared streaming loop over a fake engine (ORCH-4100, ORCH-4103, ORCH-4105, ORCH-7044).

A toy wire: ``data: {"t": "text"}`` per token, ``data: {"end": true}`` last.
The four real adapters run the full conformance suite on top of this base.
"""

from __future__ import annotations

import asyncio
import asyncio.timeouts
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import web
from llama_orch.adapter_http import HttpAdapter, SSEStream
from llama_orch.adapter_http._deadline import Deadline
from llama_orch.adapter_http._streams import InFlight
from llama_orch.core.adapter_api import (
    CANCELED,
    ENGINE_TRACE_HEADERS,
    AdapterEvent,
    AdapterTarget,
    EngineMetrics,
    EngineProps,
    Finished,
    GenerateRequest,
    TokenChunk,
)
from llama_orch.core.errors import DecodeTimeout, InvalidParams, OrchError, WorkerReset
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
    engine = "toy"

    def __init__(self, url: str, **options: object) -> None:
        super().__init__(AdapterTarget(replica_id="r", base_url=url, options=options))
        self.reads = 0

    async def stream_request(self, req: GenerateRequest) -> tuple[str, object]:
        return "/gen", {"n": req.max_tokens}

    def new_decoder(self, req: GenerateRequest) -> ToyStream:
        return ToyStream()

    @staticmethod
    def error_table(status: int, body: bytes, what: str) -> OrchError:
        return InvalidParams(f"{what}: HTTP {status}: {body.decode()}", engine="toy")

    async def _read(self, inflight: InFlight) -> bytes | None:
        self.reads += 1
        return await super()._read(inflight)

    async def props(self) -> EngineProps:
        raise NotImplementedError

    async def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    async def metrics(self) -> EngineMetrics:
        raise NotImplementedError


def _engine(tokens: int, *, end: bool = True, stall: bool = False) -> FakeHTTPEngine:
    async def gen(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        for i in range(tokens):
            await resp.write(b'data: {"t": " t%d"}\n\n' % i)
            await asyncio.sleep(0.001)  # one read per event on the client side
        if stall:
            await fake.release.wait()
        if end:
            await resp.write(b'data: {"end": true}\n\n')
        return resp

    fake = FakeHTTPEngine({"POST /gen": gen})
    return fake


async def _collect(it: AsyncIterator[AdapterEvent]) -> list[AdapterEvent]:
    return [ev async for ev in it]


def _req(task_id: str = "t1", n: int = 40) -> GenerateRequest:
    return GenerateRequest(task_id=task_id, prompt="p", max_tokens=n, seed=1)


async def test_one_idle_timer_per_stream_not_one_per_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCH-4103: the timeouts armed for a stream do not grow with its reads
    (an asyncio.timeout per read is the cost the lazy timer removes)."""
    armed = 0
    original = asyncio.timeouts.Timeout.reschedule

    def counting(self: asyncio.timeouts.Timeout, when: float | None) -> None:
        nonlocal armed
        armed += when is not None
        original(self, when)

    monkeypatch.setattr(asyncio.timeouts.Timeout, "reschedule", counting)
    entered = Deadline.__enter__

    def counting_deadline(self: Deadline) -> None:  # ORCH-2964's deadline counts too
        nonlocal armed
        armed += 1
        entered(self)

    monkeypatch.setattr(Deadline, "__enter__", counting_deadline)
    seen: dict[int, tuple[int, int]] = {}
    for n in (5, 40):
        async with _engine(n) as fake:
            adapter = Toy(fake.base_url)
            try:
                before = armed
                events = await _collect(adapter.generate(_req(n=n)))
                seen[n] = (adapter.reads, armed - before)
            finally:
                await adapter.aclose()
        text = "".join(e.text for e in events if isinstance(e, TokenChunk))
        assert text == "".join(f" t{i}" for i in range(n))
        assert events[-1] == Finished(reason="eos", tokens_generated=n)
    assert seen[40][0] >= seen[5][0] + 10, f"the fake should spread streams over reads: {seen}"
    assert seen[40][1] == seen[5][1], f"timeouts armed grew with the reads: {seen}"
    assert seen[5][1] >= 1, f"the engine request's deadline was not counted: {seen}"


async def test_silence_mid_stream_is_decode_timeout() -> None:
    async with _engine(2, stall=True) as fake:
        adapter = Toy(fake.base_url, idle_timeout_s=0.3)
        try:
            with pytest.raises(DecodeTimeout, match=r"no bytes from engine for 0.3s"):
                await _collect(adapter.generate(_req()))
        finally:
            await adapter.aclose()


async def test_cancel_by_task_id_ends_with_canceled() -> None:
    """ORCH-4105: one spelling of the cancel reason, from core."""
    async with _engine(3, stall=True) as fake:
        adapter = Toy(fake.base_url)
        try:
            events: list[AdapterEvent] = []
            async for ev in adapter.generate(_req("t9")):
                events.append(ev)
                if len(events) == 3:
                    await adapter.cancel("t9")
        finally:
            await adapter.aclose()
    assert events[-1] == Finished(reason=CANCELED, tokens_generated=3)
    assert CANCELED == "canceled"


async def test_body_ending_before_the_final_event_is_worker_reset() -> None:
    async with _engine(2, end=False) as fake:
        adapter = Toy(fake.base_url)
        try:
            with pytest.raises(WorkerReset, match="before the final event"):
                await _collect(adapter.generate(_req()))
        finally:
            await adapter.aclose()


async def test_non_200_at_open_uses_the_adapters_error_table() -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=400, text="too long")

    async with FakeHTTPEngine({"POST /gen": refuse}) as fake:
        adapter = Toy(fake.base_url)
        try:
            with pytest.raises(InvalidParams, match="POST /gen: HTTP 400: too long"):
                await _collect(adapter.generate(_req()))
            assert not adapter._inflight
        finally:
            await adapter.aclose()


async def test_second_stream_with_the_same_task_id_is_refused() -> None:
    async with _engine(2, stall=True) as fake:
        adapter = Toy(fake.base_url)
        try:
            first = adapter.generate(_req("dup"))
            await anext(first)
            with pytest.raises(InvalidParams, match="already streaming"):
                await _collect(adapter.generate(_req("dup")))
            await first.aclose()
        finally:
            await adapter.aclose()


async def test_a_closed_adapter_opens_nothing() -> None:
    """ORCH-4106: after ``aclose()`` every call fails with WorkerReset and opens no
    session or stream pool (before, the lazy session was opened again and never
    closed); health answers not live; cancel stays a no-op; a stream that was open at
    the close ends with WorkerReset and its connection is closed, not pooled."""
    async with _engine(3, stall=True) as fake:
        adapter = Toy(fake.base_url)
        assert (
            await adapter.health()
        ).live  # a session exists (the fake has no /health), then the close
        stream = adapter.generate(_req("open"))
        first = await stream.__anext__()
        assert first is not None
        await adapter.aclose()
        with pytest.raises(WorkerReset):
            await _collect(stream)
        with pytest.raises(WorkerReset, match="adapter closed"):
            await _collect(adapter.generate(_req("late")))
        with pytest.raises(WorkerReset, match="adapter closed"):
            await adapter.probe("/health")
        health = await adapter.health()
        assert not health.live and not health.ready and "adapter closed" in health.detail
        await adapter.cancel("late")
        assert adapter._session is None and adapter._pool is None
        fake.release.set()


# -- ORCH-7044: a run's trace-context headers on every engine request -----------

TRACE = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
}


def _recording_engine(seen: list[tuple[str, dict[str, str]]]) -> FakeHTTPEngine:
    async def gen(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, dict(request.headers)))
        resp = await sse_response(request)
        await resp.write(b'data: {"t": " a"}\n\ndata: {"end": true}\n\n')
        return resp

    async def call(request: web.Request) -> web.Response:
        seen.append((request.path, dict(request.headers)))
        return web.json_response({"ok": True})

    return FakeHTTPEngine({"POST /gen": gen, "POST /call": call})


async def _run(adapter: Toy, traced: dict[str, str] | None) -> list[object]:
    """A stream and a call, as a run does: in a task of its own (so in a context of
    its own, as the orchestrator's runner)."""

    async def run() -> list[object]:
        if traced is not None:
            ENGINE_TRACE_HEADERS.set(traced)
        events: list[object] = list(await _collect(adapter.generate(_req())))
        events.append(await adapter.call("POST", "/call", {"x": 1}))
        return events

    return await asyncio.create_task(run())


async def test_a_traced_run_sends_its_trace_context_on_the_stream_and_calls() -> None:
    """ORCH-7044: both request paths (the lean stream, the aiohttp calls) carry it."""
    seen: list[tuple[str, dict[str, str]]] = []
    async with _recording_engine(seen) as fake:
        adapter = Toy(fake.base_url)
        try:
            for _ in range(2):  # the second stream runs on the pooled connection
                events = await _run(adapter, TRACE)
                assert isinstance(events[0], TokenChunk) and isinstance(events[1], Finished)
        finally:
            await adapter.aclose()
    assert [path for path, _ in seen] == ["/gen", "/call", "/gen", "/call"]
    for _, headers in seen:
        assert headers["traceparent"] == TRACE["traceparent"]
        assert headers["tracestate"] == TRACE["tracestate"]
        assert headers["Content-Type"] == "application/json"


async def test_an_untraced_run_sends_no_trace_context() -> None:
    """ORCH-7044: tracing off, no header is added (and a traced run's headers do not
    stay with the adapter or its pooled connection)."""
    seen: list[tuple[str, dict[str, str]]] = []
    async with _recording_engine(seen) as fake:
        adapter = Toy(fake.base_url)
        try:
            await _run(adapter, TRACE)
            await _run(adapter, None)
        finally:
            await adapter.aclose()
    assert [path for path, _ in seen] == ["/gen", "/call", "/gen", "/call"]
    for _, headers in seen[2:]:
        assert "traceparent" not in headers and "tracestate" not in headers
