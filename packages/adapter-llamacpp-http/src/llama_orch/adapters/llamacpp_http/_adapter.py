"""The llama.cpp ``llama-server`` adapter (native API).

Transport, streaming loop and cancel by disconnect come from
:class:`llama_orch.adapter_http.HttpAdapter`; llama-server has no cancel
endpoint and stops a task when its client disconnects (ORCH-3006).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec
from llama_orch.adapter_http import HttpAdapter
from llama_orch.core.adapter_api import (
    Capability,
    EngineMetrics,
    EngineProps,
    GenerateRequest,
)
from llama_orch.core.errors import InvalidParams, OrchError, WorkerReset
from llama_orch.core.prometheus import parse_prometheus

from ._errors import ENGINE, error_from_response, parse_error_body
from ._metrics import kv_usage_from_slots, to_engine_metrics
from ._options import LlamaCppOptions
from ._stream import CompletionStream
from ._wire import CompletionRequest, apply_template_decoder, props_decoder, tokenize_decoder

__all__ = ["LlamaCppHttpAdapter"]


class LlamaCppHttpAdapter(HttpAdapter):
    engine: ClassVar[str] = ENGINE
    options: LlamaCppOptions
    options_type = LlamaCppOptions
    error_table = staticmethod(error_from_response)

    def not_ready_detail(self, status: int, body: bytes) -> str:
        err = parse_error_body(body)  # 503 = loading (live)
        return err.message if err and err.message else f"HTTP {status}"

    async def props(self) -> EngineProps:
        """ORCH-3004: slots and per-slot ctx from the engine; version/digest from target."""
        p = self.decode(props_decoder, await self.call("GET", "/props"), "GET /props")
        caps = {
            Capability.TOKENIZE,
            Capability.METRICS,
            Capability.SEEDED_SAMPLING,
            Capability.GRAMMAR,
        }
        if p.chat_template:
            caps.add(Capability.CHAT_TEMPLATE)
        t = self.target
        return EngineProps(
            engine=ENGINE,
            engine_version=t.engine_version or p.build_info,
            model_ref=t.model_ref or p.model_alias or p.model_path,
            model_digest=t.model_digest,
            slots=p.total_slots,
            ctx=p.default_generation_settings.n_ctx,
            capabilities=frozenset(caps),
        )

    async def tokenize(self, text: str) -> list[int]:
        """ORCH-3008: counted like ``/completion`` counts a prompt (special tokens on)."""
        body = {"content": text, "add_special": True, "parse_special": True}
        payload = await self.call("POST", "/tokenize", body)
        return self.decode(tokenize_decoder, payload, "POST /tokenize").tokens

    async def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        try:
            payload = await self.call("POST", "/apply-template", {"messages": messages})
        except WorkerReset as exc:
            if "HTTP 404" in exc.message:  # a build without /apply-template
                raise InvalidParams(
                    "this llama-server build has no /apply-template", engine=ENGINE
                ) from exc
            raise
        return self.decode(apply_template_decoder, payload, "POST /apply-template").prompt

    async def metrics(self) -> EngineMetrics:
        """ORCH-3009: needs ``--metrics`` (else 501 -> InvalidParams)."""
        payload = await self.call("GET", "/metrics")
        m = to_engine_metrics(parse_prometheus(payload.decode("utf-8", "replace")))
        if m.kv_cache_usage_ratio is None:
            # Current builds dropped llamacpp:kv_cache_usage_ratio: derive it from the
            # engine's own /slots report (ORCH-7003).
            try:
                slots = await self.call("GET", "/slots")
            except OrchError:
                return m
            ratio = kv_usage_from_slots(slots)
            if ratio is not None:
                m = msgspec.structs.replace(m, kv_cache_usage_ratio=ratio)
        return m

    async def stream_request(self, req: GenerateRequest) -> tuple[str, object]:
        return "/completion", CompletionRequest(
            prompt=req.prompt,
            n_predict=req.max_tokens,
            seed=req.seed,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            min_p=req.min_p,
            repeat_penalty=req.repeat_penalty,
            stop=list(req.stop),
            cache_prompt=req.cache_prompt,
            grammar=msgspec.UNSET if req.grammar is None else req.grammar,
        )

    def new_decoder(self, req: GenerateRequest) -> CompletionStream:
        return CompletionStream()
