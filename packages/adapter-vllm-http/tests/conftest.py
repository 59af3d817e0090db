"""Fake OpenAI-completions servers for what neither vLLM nor llama-server can
produce on demand: a connection cut mid-stream, a stall, an error event inside
a 200 stream (vLLM's "error, then [DONE]" and llama-server's "error, then
close"), SSE framing variants and llama-server's "Loading model" 503s.

Each factory is an async context manager yielding a suite ``FaultCase``;
tests reach them through the ``vllm_fakes`` fixture (test modules are copied
out of the workspace for the standalone-install run, so no sibling imports).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
from aiohttp import web
from llama_orch.adapters.vllm_http import VllmHttpAdapter
from llama_orch.core.adapter_api import AdapterTarget
from llama_orch.testing import FaultCase
from llama_orch.testing.fake_http import FakeHTTPEngine, free_port_url, send_split, sse_response

MODEL = "fake-model"
DELTAS = ["Hello", ",", " wor", "ld", " \u00e9t\u00e9 \U0001f600"]


def chunk(text: str, finish: str | None = None, ids: list[int] | None = None) -> bytes:
    choice = {"index": 0, "text": text, "finish_reason": finish, "stop_reason": None}
    if ids is not None:
        choice["token_ids"] = ids
    body = {"id": "cmpl-1", "object": "text_completion", "model": MODEL, "choices": [choice]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def usage(prompt: int, completion: int) -> bytes:
    body = {
        "id": "cmpl-1",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"data": [{"id": MODEL, "max_model_len": 256, "owned_by": "vllm"}]})


def _adapter(base_url: str, **options: object) -> VllmHttpAdapter:
    return VllmHttpAdapter(AdapterTarget(replica_id="fake", base_url=base_url, options=options))


@asynccontextmanager
async def _serve(
    completions: object, **options: object
) -> AsyncIterator[tuple[FakeHTTPEngine, VllmHttpAdapter]]:
    routes = {"GET /v1/models": _models, "POST /v1/completions": completions}
    async with FakeHTTPEngine(routes) as fake:  # type: ignore[arg-type]
        yield fake, _adapter(fake.base_url, **options)


@asynccontextmanager
async def reset_mid_stream() -> AsyncIterator[FaultCase]:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(chunk("Hello", ids=[1]) + chunk(" there", ids=[2]))
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # RST, no terminating chunk
        return resp

    async with _serve(handler) as (_fake, adapter):
        yield FaultCase(adapter=adapter, expected_text="Hello there")


@asynccontextmanager
async def stall_mid_stream() -> AsyncIterator[FaultCase]:
    fake_box: list[FakeHTTPEngine] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(chunk("Hello", ids=[1]))
        await fake_box[0].release.wait()
        return resp

    async with _serve(handler, idle_timeout_s=0.5) as (fake, adapter):
        fake_box.append(fake)
        yield FaultCase(adapter=adapter, expected_text="Hello")


@asynccontextmanager
async def error_then_done() -> AsyncIterator[FaultCase]:
    """vLLM's mid-stream failure: ``data: {"error":...}`` followed by ``[DONE]``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(chunk("Hello", ids=[1]))
        err = {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}
        await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n" + b"data: [DONE]\n\n")
        return resp

    async with _serve(handler) as (_fake, adapter):
        yield FaultCase(adapter=adapter, expected_text="Hello")


@asynccontextmanager
async def error_then_close() -> AsyncIterator[FaultCase]:
    """llama-server's /v1 mid-stream failure: the error event, then close, no [DONE]."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(chunk("Hi", ids=[1]))
        err = {"error": {"code": 500, "message": "slot failed", "type": "server_error"}}
        await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
        return resp

    async with _serve(handler) as (_fake, adapter):
        yield FaultCase(adapter=adapter, expected_text="Hi")


@asynccontextmanager
async def sse_framing() -> AsyncIterator[FaultCase]:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        body = b": keep-alive comment\n\n"
        for i, d in enumerate(DELTAS):
            event = chunk(d, ids=[i]).replace(b"data: ", b"data:" if i % 2 else b"data: ")
            if i == 2:
                event = event.replace(b"\n", b"\r\n")
            body += event + b": ping\n"
        body += chunk("", finish="length") + usage(3, len(DELTAS)) + b"data:[DONE]\n\n"
        await send_split(resp, body, piece=3)
        return resp

    async with _serve(handler) as (_fake, adapter):
        yield FaultCase(adapter=adapter, expected_text="".join(DELTAS))


@asynccontextmanager
async def unreachable() -> AsyncIterator[FaultCase]:
    yield FaultCase(adapter=_adapter(free_port_url()))


@asynccontextmanager
async def llama_server_loading() -> AsyncIterator[FaultCase]:
    """llama-server while it loads: every route 503 ``unavailable_error`` (engines.md §1)."""
    loaded = asyncio.Event()
    body = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}

    async def health(request: web.Request) -> web.Response:
        if loaded.is_set():
            return web.json_response({"status": "ok"})
        return web.json_response(body, status=503)

    async def completions(request: web.Request) -> web.Response:
        return web.json_response(body, status=503)

    async def models(request: web.Request) -> web.Response:
        if loaded.is_set():
            return await _models(request)
        return web.json_response(body, status=503)

    routes = {"GET /health": health, "GET /v1/models": models, "POST /v1/completions": completions}
    async with FakeHTTPEngine(routes) as fake:  # type: ignore[arg-type]

        async def finish() -> None:
            loaded.set()

        yield FaultCase(adapter=_adapter(fake.base_url), finish_loading=finish)


@pytest.fixture
def vllm_fakes() -> SimpleNamespace:
    """The fault factories above, by name."""
    return SimpleNamespace(
        reset_mid_stream=reset_mid_stream,
        stall_mid_stream=stall_mid_stream,
        error_then_done=error_then_done,
        error_then_close=error_then_close,
        sse_framing=sse_framing,
        unreachable=unreachable,
        llama_server_loading=llama_server_loading,
    )
