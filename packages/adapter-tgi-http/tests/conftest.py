"""A fake TGI server built from TGI's documented API and wire behaviour.

No real TGI runs here (it needs a GPU or a large CPU image and a hub
download). The fake follows the facts in ``shared/reference/engines.md`` §3
and TGI's OpenAPI document:

* ``POST /generate_stream`` always answers HTTP 200; validation errors
  (``temperature`` must be > 0, 0 < ``top_p`` < 1, ``top_k`` > 0, prompt
  longer than ``max_input_tokens``, prompt + ``max_new_tokens`` above
  ``max_total_tokens``) and generation errors arrive as
  ``data:{"error":...,"error_type":...}`` events.
* Events are written ``data:<json>`` without a space; one event per token;
  the last token event carries ``generated_text`` and, only when the request
  set ``details: true``, ``details`` (``finish_reason`` ``length`` /
  ``eos_token`` / ``stop_sequence``, ``generated_tokens``, ``seed``,
  ``input_length``). The eos token is a special token whose text
  ``generated_text`` omits. A matched stop sequence stays in the text.
* Decoding is greedy (seed ignored) unless ``do_sample`` is true or a
  warper (temperature, top_k, top_p) is set; a sampling request without a
  seed draws a random one.
* A client that disconnects is dropped at the next decode step.
* ``/metrics`` exports ``tgi_batch_current_size``, ``tgi_queue_size`` and the
  ``tgi_request_input_length`` / ``tgi_request_generated_tokens`` histogram
  sums, observed when a request succeeds.

The "model" is a hash: token *i* is a word chosen from the prompt, step and
(when sampling) seed and temperature; ``Say yes.`` prompts answer `` yes``
then eos. The tokenizer splits on whitespace.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from aiohttp import web
from llama_orch.adapters.tgi_http import TgiHttpAdapter, generate_parameters
from llama_orch.core.adapter_api import AdapterTarget, Capability, GenerateRequest, WorkerAdapter
from llama_orch.testing import EngineUnderTest, Expectations, Fault, FaultCase, Probes
from llama_orch.testing.fake_http import FakeHTTPEngine, free_port_url, send_split, sse_response

WORDS = (
    "river",
    "stone",
    "light",
    "quiet",
    "north",
    "window",
    "llama",
    "green",
    "tide",
    "ember",
    "salt",
    "harbour",
    "wind",
    "lamp",
    "field",
    "moss",
)
EOS_TEXT = "</s>"
INFO = {
    "model_id": "fake/smol-tgi",
    "model_sha": "5f1c0a7e9d2b4c6a8e0f1d3b5a7c9e1f2a4b6c8d",
    "model_dtype": "torch.float32",
    "model_device_type": "cpu",
    "version": "3.3.6-fake",
    "sha": "fake0000",
    "docker_label": None,
    "max_concurrent_requests": 4,
    "max_best_of": 2,
    "max_stop_sequences": 4,
    "max_input_tokens": 512,
    "max_total_tokens": 1024,
    "validation_workers": 2,
    "max_client_batch_size": 4,
    "router": "text-generation-router",
}
TOKEN_DELAY_S = 0.004


def tokenize(text: str) -> list[tuple[int, str, int, int]]:
    out = []
    for m in re.finditer(r"\s*\S+", text):
        tid = 1 + int(hashlib.blake2b(m.group().encode(), digest_size=4).hexdigest(), 16)
        out.append((tid, m.group(), m.start(), m.end()))
    return out


def next_word(prompt: str, i: int, sample_key: str | None) -> str:
    key = f"{prompt}\x00{i}\x00{sample_key or 'greedy'}"
    h = int(hashlib.blake2b(key.encode(), digest_size=8).hexdigest(), 16)
    return " " + WORDS[h % len(WORDS)]


def event(body: dict[str, Any]) -> bytes:
    return b"data:" + json.dumps(body).encode() + b"\n\n"


def token_event(i: int, text: str, *, special: bool = False, **final: Any) -> bytes:
    body = {
        "index": i + 1,
        "token": {"id": 0 if special else 7 + i, "text": text, "logprob": -0.5, "special": special},
        "generated_text": None,
        "details": None,
    }
    body.update(final)
    return event(body)


def validate(params: dict[str, Any], n_input: int) -> str | None:
    """TGI's validation messages (router/src/validation.rs), as a fake applies them."""
    t = params.get("temperature")
    if t is not None and t <= 0:
        return "`temperature` must be strictly positive"
    p = params.get("top_p")
    if p is not None and not 0 < p < 1:
        return "`top_p` must be > 0.0 and < 1.0"
    k = params.get("top_k")
    if k is not None and k <= 0:
        return "`top_k` must be strictly positive"
    if len(params.get("stop", [])) > INFO["max_stop_sequences"]:
        return "`stop` supports up to 4 stop sequences"
    if n_input > INFO["max_input_tokens"]:
        return f"`inputs` must have less than {INFO['max_input_tokens']} tokens. Given: {n_input}"
    new = params.get("max_new_tokens") or 100
    if n_input + new > INFO["max_total_tokens"]:
        return (
            f"`inputs` tokens + `max_new_tokens` must be <= {INFO['max_total_tokens']}. "
            f"Given: {n_input} `inputs` tokens and {new} `max_new_tokens`"
        )
    return None


@dataclass
class FakeTgi:
    """One fake TGI server; ``mode`` selects a fault for every stream."""

    mode: str = "normal"  # normal | reset | stall | error | framing
    engine: FakeHTTPEngine | None = None
    generated_total: int = 0  # engine-side: every decoded token (the probe)
    running: int = 0
    input_sum: int = 0
    generated_sum: int = 0  # histogram sum: successful requests only

    @property
    def base_url(self) -> str:
        assert self.engine is not None
        return self.engine.base_url

    def generate_text(self, prompt: str, params: dict[str, Any]) -> tuple[list[str], str]:
        """Token texts and finish reason for a request (no pacing)."""
        sampling = bool(params.get("do_sample")) or any(
            params.get(k) is not None for k in ("temperature", "top_k", "top_p")
        )
        seed = params.get("seed")
        if sampling and seed is None:
            seed = random.getrandbits(63)
        key = f"{seed}:{params.get('temperature')}" if sampling else None
        stops: list[str] = params.get("stop", [])
        tokens: list[str] = []
        text = ""
        for i in range(params.get("max_new_tokens") or 100):
            if "Say yes." in prompt:
                tok = " yes" if i == 0 else EOS_TEXT
            else:
                tok = next_word(prompt, i, key)
            tokens.append(tok)
            if tok == EOS_TEXT:
                return tokens, "eos_token"
            text += tok
            if any(s in text for s in stops):
                return tokens, "stop_sequence"
        return tokens, "length"

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(INFO)

    async def tokenize_route(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            [{"id": i, "text": t, "start": s, "stop": e} for i, t, s, e in tokenize(body["inputs"])]
        )

    async def metrics(self, request: web.Request) -> web.Response:
        text = (
            "# TYPE tgi_batch_current_size gauge\n"
            f"tgi_batch_current_size {self.running}\n"
            "# TYPE tgi_queue_size gauge\n"
            "tgi_queue_size 0\n"
            "# TYPE tgi_request_input_length histogram\n"
            f"tgi_request_input_length_sum {self.input_sum}\n"
            "# TYPE tgi_request_generated_tokens histogram\n"
            f"tgi_request_generated_tokens_sum {self.generated_sum}\n"
        )
        return web.Response(text=text)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt: str = body["inputs"]
        params: dict[str, Any] = body.get("parameters") or {}
        resp = await sse_response(request)
        n_input = len(tokenize(prompt))
        problem = validate(params, n_input)
        if problem is not None:
            await resp.write(
                event({"error": f"Input validation error: {problem}", "error_type": "validation"})
            )
            return resp
        if self.mode == "framing":
            await self._framing(resp)
            return resp
        tokens, reason = self.generate_text(prompt, params)
        self.running += 1
        try:
            text = ""
            for i, tok in enumerate(tokens):
                await asyncio.sleep(TOKEN_DELAY_S)  # the fake's decode step
                self.generated_total += 1
                if self.mode == "reset" and i == 2:
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if self.mode == "stall" and i == 1:
                    assert self.engine is not None
                    await self.engine.release.wait()
                    return resp
                if self.mode == "error" and i == 1:
                    await resp.write(
                        event(
                            {
                                "error": "Request failed during generation: Server error: OOM",
                                "error_type": "generation",
                            }
                        )
                    )
                    return resp
                special = tok == EOS_TEXT
                if not special:
                    text += tok
                last = i == len(tokens) - 1
                final: dict[str, Any] = {}
                if last:
                    final["generated_text"] = text
                    if params.get("details"):
                        final["details"] = {
                            "finish_reason": reason,
                            "generated_tokens": len(tokens),
                            "seed": params.get("seed"),
                            "input_length": n_input,
                        }
                try:
                    await resp.write(token_event(i, tok, special=special, **final))
                    if i % 7 == 3:
                        await resp.write(b":\n\n")  # keep-alive comment
                except (ConnectionError, RuntimeError):
                    return resp  # client gone: dropped at this step, like TGI's batcher
            self.input_sum += n_input
            self.generated_sum += len(tokens)
            return resp
        finally:
            self.running -= 1

    async def _framing(self, resp: web.StreamResponse) -> None:
        payload = (
            b":\r\n\r\n"
            + token_event(0, " H\u00e9l").replace(b"data:", b"data: ")
            + b": keep-alive\n\n"
            + token_event(1, "lo").replace(b"\n\n", b"\r\n\r\n")
            + token_event(2, " \u2603")
            + token_event(
                3,
                EOS_TEXT,
                special=True,
                generated_text=" H\u00e9llo \u2603",
                details={
                    "finish_reason": "eos_token",
                    "generated_tokens": 4,
                    "seed": None,
                    "input_length": 3,
                },
            )
        )
        await send_split(resp, payload, piece=3)

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[FakeTgi]:
        routes = {
            "GET /health": self.health,
            "GET /info": self.info,
            "POST /tokenize": self.tokenize_route,
            "GET /metrics": self.metrics,
            "POST /generate_stream": self.generate_stream,
        }
        async with FakeHTTPEngine(routes) as engine:
            self.engine = engine
            yield self


def _adapter(url: str, **options: object) -> TgiHttpAdapter:
    return TgiHttpAdapter(AdapterTarget(replica_id="tgi-0", base_url=url, options=options))


def _fault(mode: str, expected_text: str | None, **options: object) -> Callable[[], Any]:
    @asynccontextmanager
    async def case() -> AsyncIterator[FaultCase]:
        async with FakeTgi(mode=mode).serve() as fake:
            yield FaultCase(adapter=_adapter(fake.base_url, **options), expected_text=expected_text)

    return case


@asynccontextmanager
async def _unreachable() -> AsyncIterator[FaultCase]:
    yield FaultCase(adapter=_adapter(free_port_url()))


def _first_tokens(n: int) -> str:
    # the suite's default request samples (temperature 0.7, seed 1234)
    req = GenerateRequest(
        task_id="x",
        prompt=Expectations().prompt,
        max_tokens=24,
        seed=1234,
        **Expectations().sampling,
    )
    params = msgspec.to_builtins(generate_parameters(req))
    tokens, _ = FakeTgi().generate_text(req.prompt, params)
    return "".join(tokens[:n])


@pytest.fixture
async def tgi_engine_under_test() -> AsyncIterator[EngineUnderTest]:
    async with FakeTgi().serve() as fake:

        async def generated(_: WorkerAdapter) -> float:
            return float(fake.generated_total)

        async def busy(_: WorkerAdapter) -> int:
            return fake.running

        async def reference(_: WorkerAdapter, req: GenerateRequest) -> str:
            tokens, _ = fake.generate_text(
                req.prompt, msgspec.to_builtins(generate_parameters(req))
            )
            return "".join(t for t in tokens if t != EOS_TEXT)

        yield EngineUnderTest(
            engine="tgi-http",
            make_adapter=lambda: _adapter(fake.base_url),
            expect=Expectations(
                slots=4,
                ctx=1024,
                engine_version="tgi 3.3.6-fake (fake0000)",
                model_digest=INFO["model_sha"],
                model_ref="fake/smol-tgi",
                capabilities=frozenset(
                    {Capability.TOKENIZE, Capability.METRICS, Capability.SEEDED_SAMPLING}
                ),
                eos_request=GenerateRequest(
                    task_id="eos", prompt="Say yes.", max_tokens=50, seed=1, temperature=0.0
                ),
                stop_text_included=True,
                metrics_fields=frozenset(
                    {
                        "requests_running",
                        "requests_waiting",
                        "prompt_tokens_total",
                        "generated_tokens_total",
                    }
                ),
                timeout_s=30,
            ),
            probes=Probes(
                generated_tokens_total=generated, busy_slots=busy, reference_text=reference
            ),
            faults={
                Fault.UNREACHABLE: _unreachable,
                Fault.RESET_MID_STREAM: _fault("reset", _first_tokens(2)),
                Fault.STALL_MID_STREAM: _fault("stall", _first_tokens(1), idle_timeout_s=0.3),
                Fault.ERROR_IN_STREAM: _fault("error", _first_tokens(1)),
                Fault.SSE_FRAMING: _fault("framing", " H\u00e9llo \u2603"),
            },
        )
