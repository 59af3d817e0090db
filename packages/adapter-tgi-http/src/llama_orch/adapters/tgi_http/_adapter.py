"""The TGI adapter (native API).

Transport, streaming loop and cancel by disconnect come from
:class:`llama_orch.adapter_http.HttpAdapter`. TGI has no cancel endpoint; its
batcher drops a request whose client went away at the next decode step
(ORCH-3006).
"""

from __future__ import annotations

from typing import ClassVar

from llama_orch.adapter_http import HttpAdapter
from llama_orch.core.adapter_api import (
    Capability,
    EngineMetrics,
    EngineProps,
    GenerateRequest,
)
from llama_orch.core.prometheus import parse_prometheus

from ._errors import ENGINE, error_from_response, parse_error_body
from ._options import TgiOptions
from ._stream import GenerateStream
from ._wire import GenerateBody, GenerateParameters, info_decoder, tokenize_decoder

__all__ = ["METRICS", "TgiHttpAdapter", "generate_parameters"]

_U64 = (1 << 64) - 1

# TGI metric -> EngineMetrics field. TGI exports no KV-cache gauge.
METRICS: dict[str, str] = {
    "tgi_batch_current_size": "requests_running",
    "tgi_queue_size": "requests_waiting",
    "tgi_request_input_length_sum": "prompt_tokens_total",
    "tgi_request_generated_tokens_sum": "generated_tokens_total",
}


def generate_parameters(req: GenerateRequest) -> GenerateParameters:
    """ORCH-4017: temperature 0 is greedy: ``do_sample: false`` and no warper at
    all (TGI rejects ``temperature: 0`` and samples as soon as any warper is
    set). ``min_p`` has no TGI equivalent and is not sent."""
    stop = list(req.stop)
    if req.temperature <= 0.0:
        return GenerateParameters(
            max_new_tokens=req.max_tokens,
            details=True,
            do_sample=False,
            repetition_penalty=req.repeat_penalty if req.repeat_penalty != 1.0 else None,
            stop=stop,
        )
    return GenerateParameters(
        max_new_tokens=req.max_tokens,
        details=True,
        do_sample=True,
        seed=req.seed & _U64,  # TGI's seed is a u64
        temperature=req.temperature,
        top_k=req.top_k if req.top_k > 0 else None,
        top_p=req.top_p if 0.0 < req.top_p < 1.0 else None,
        repetition_penalty=req.repeat_penalty if req.repeat_penalty != 1.0 else None,
        stop=stop,
    )


class TgiHttpAdapter(HttpAdapter):
    engine: ClassVar[str] = ENGINE
    options: TgiOptions
    options_type = TgiOptions
    error_table = staticmethod(error_from_response)

    def not_ready_detail(self, status: int, body: bytes) -> str:
        """ORCH-3003: 503 (unhealthy) = live, not ready; a refused connection
        (TGI while loading) = not live."""
        err = parse_error_body(body)
        return err.error if err and err.error else f"HTTP {status}"

    async def props(self) -> EngineProps:
        """ORCH-3004: slots = max_concurrent_requests, ctx = max_total_tokens;
        version and digest from the target, else TGI's version/sha and model_sha."""
        info = self.decode(info_decoder, await self.call("GET", "/info"), "GET /info")
        t = self.target
        version = f"tgi {info.version}" + (f" ({info.sha})" if info.sha else "")
        return EngineProps(
            engine=ENGINE,
            engine_version=t.engine_version or version,
            model_ref=t.model_ref or info.model_id,
            model_digest=t.model_digest or (info.model_sha or ""),
            slots=info.max_concurrent_requests,
            ctx=info.max_total_tokens,
            capabilities=frozenset(
                {Capability.TOKENIZE, Capability.METRICS, Capability.SEEDED_SAMPLING}
            ),
        )

    async def tokenize(self, text: str) -> list[int]:
        """ORCH-3008: TGI's own tokenizer (404 without a fast tokenizer -> InvalidParams)."""
        payload = await self.call("POST", "/tokenize", {"inputs": text})
        return [t.id for t in self.decode(tokenize_decoder, payload, "POST /tokenize")]

    async def metrics(self) -> EngineMetrics:
        payload = await self.call("GET", "/metrics")
        samples = parse_prometheus(payload.decode("utf-8", "replace"))
        fields = {field: samples[name] for name, field in METRICS.items() if name in samples}
        return EngineMetrics(**fields, raw=samples)

    async def stream_request(self, req: GenerateRequest) -> tuple[str, object]:
        return "/generate_stream", GenerateBody(
            inputs=req.prompt, parameters=generate_parameters(req)
        )

    def new_decoder(self, req: GenerateRequest) -> GenerateStream:
        return GenerateStream()
