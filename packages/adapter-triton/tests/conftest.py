"""Fake Triton endpoints for what the real Triton cannot produce on demand:
a model that is still loading, a connection cut mid-stream, a stall, and SSE
framing variants. Wire shapes from Triton 2.51's HTTP server (engines.md §4).
Tests reach them through the ``triton_fakes`` fixture (no sibling imports:
test modules are copied out of the workspace for the standalone-install run).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
from aiohttp import web
from llama_orch.adapters.triton import TritonAdapter
from llama_orch.core.adapter_api import AdapterTarget
from llama_orch.testing import FaultCase
from llama_orch.testing.fake_http import FakeHTTPEngine, free_port_url, send_split, sse_response

MODEL = "fake"
DELTAS = ["Hello", ",", " wor", "ld", " \u00e9t\u00e9 \U0001f600"]


def event(text: str, finish: str = "") -> bytes:
    body = {"model_name": MODEL, "model_version": "1", "text_output": text}
    if finish:
        body["finish_reason"] = finish
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def adapter(base_url: str, **options: object) -> TritonAdapter:
    opts: dict[str, object] = {"model": MODEL, "ctx": 256, **options}
    return TritonAdapter(AdapterTarget(replica_id="fake", base_url=base_url, options=opts))


async def _ok(request: web.Request) -> web.Response:
    return web.Response(status=200)


@asynccontextmanager
async def _serve(
    stream: object, **options: object
) -> AsyncIterator[tuple[FakeHTTPEngine, TritonAdapter]]:
    routes = {
        "GET /v2/health/live": _ok,
        "GET /v2/health/ready": _ok,
        f"GET /v2/models/{MODEL}/ready": _ok,
        f"POST /v2/models/{MODEL}/generate_stream": stream,
    }
    async with FakeHTTPEngine(routes) as fake:  # type: ignore[arg-type]
        yield fake, adapter(fake.base_url, **options)


@asynccontextmanager
async def loading() -> AsyncIterator[FaultCase]:
    """Server live, model not ready: ready answers 400 (not 503), generate 400."""
    loaded = asyncio.Event()

    async def ready(request: web.Request) -> web.Response:
        if loaded.is_set():
            return web.Response(status=200)
        return web.json_response({"error": "Model version not ready"}, status=400)

    async def generate(request: web.Request) -> web.Response:
        msg = f"Request for unknown model: '{MODEL}' version 1 is not at ready state"
        return web.json_response({"error": msg}, status=400)

    routes = {
        "GET /v2/health/live": _ok,
        "GET /v2/health/ready": _ok,
        f"GET /v2/models/{MODEL}/ready": ready,
        f"POST /v2/models/{MODEL}/generate_stream": generate,
    }
    async with FakeHTTPEngine(routes) as fake:  # type: ignore[arg-type]

        async def finish() -> None:
            loaded.set()

        yield FaultCase(adapter=adapter(fake.base_url), finish_loading=finish)


@asynccontextmanager
async def unreachable() -> AsyncIterator[FaultCase]:
    yield FaultCase(adapter=adapter(free_port_url()))


@asynccontextmanager
async def reset_mid_stream() -> AsyncIterator[FaultCase]:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(event("Hello") + event(" there"))
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async with _serve(handler) as (_fake, a):
        yield FaultCase(adapter=a, expected_text="Hello there")


@asynccontextmanager
async def stall_mid_stream() -> AsyncIterator[FaultCase]:
    box: list[FakeHTTPEngine] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(event("Hello"))
        await box[0].release.wait()
        return resp

    async with _serve(handler, idle_timeout_s=0.5) as (fake, a):
        box.append(fake)
        yield FaultCase(adapter=a, expected_text="Hello")


@asynccontextmanager
async def sse_framing() -> AsyncIterator[FaultCase]:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        body = b": comment\n\n"
        for i, d in enumerate(DELTAS):
            ev = event(d, "length" if i == len(DELTAS) - 1 else "")
            ev = ev.replace(b"data: ", b"data:" if i % 2 else b"data: ")
            if i == 2:
                ev = ev.replace(b"\n", b"\r\n")
            body += ev
        await send_split(resp, body, piece=3)
        return resp

    async with _serve(handler) as (_fake, a):
        yield FaultCase(adapter=a, expected_text="".join(DELTAS))


@pytest.fixture
def triton_fakes() -> SimpleNamespace:
    """The fault factories above, by name."""
    return SimpleNamespace(
        loading=loading,
        unreachable=unreachable,
        reset_mid_stream=reset_mid_stream,
        stall_mid_stream=stall_mid_stream,
        sse_framing=sse_framing,
    )
