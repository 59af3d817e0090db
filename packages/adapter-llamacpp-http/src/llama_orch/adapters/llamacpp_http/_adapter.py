"""The llama.cpp ``llama-server`` adapter (native API).

Transport, streaming loop and cancel by disconnect come from
:class:`llama_orch.adapter_http.HttpAdapter`; llama-server has no cancel
endpoint and stops a task when its client disconnects (ORCH-3006).
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

import msgspec
from llama_orch.adapter_http import HttpAdapter
from llama_orch.core.adapter_api import (
    AdapterTarget,
    Capability,
    Embeddings,
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
from ._template import PROBES, ChatTemplate, compile_template
from ._wire import (
    CompletionRequest,
    apply_template_decoder,
    embeddings_decoder,
    props_decoder,
    tokenize_decoder,
)

_log = logging.getLogger(__name__)

__all__ = ["LlamaCppHttpAdapter"]


class LlamaCppHttpAdapter(HttpAdapter):
    engine: ClassVar[str] = ENGINE
    options: LlamaCppOptions
    options_type = LlamaCppOptions
    error_table = staticmethod(error_from_response)
    # ORCH-2723: llama-server (11434) closes the connection after every streamed answer, with
    # no `Connection: close` to say so: a pooled stream connection would be dead by
    # the next request (measured with curl and aiohttp, issue #20). Streams ask
    # for `Connection: close`; /tokenize, /props, /health and /metrics stay pooled.
    pool_streams = False

    def __init__(self, target: AdapterTarget) -> None:
        super().__init__(target)
        self._embeddings: bool | None = None
        # ORCH-5011: the engine's chat template, rendered here once the probes agreed
        self._template: ChatTemplate | None = None
        self._template_checked = False
        self._template_lock = asyncio.Lock()
        self.local_renders = 0  # chats rendered in process (tests, benchmarks)

    def not_ready_detail(self, status: int, body: bytes) -> str:
        err = parse_error_body(body)  # 503 = loading (live)
        return err.message if err and err.message else f"HTTP {status}"

    async def props(self) -> EngineProps:
        """ORCH-3004: slots and per-slot ctx from the engine; version/digest from target."""
        p = self.decode(props_decoder, await self.call("GET", "/props"), "GET /props")
        # llama-server turns a JSON schema into a grammar and reports per-token
        # probabilities (n_probs) on every build this adapter supports.
        caps = {
            Capability.TOKENIZE,
            Capability.METRICS,
            Capability.SEEDED_SAMPLING,
            Capability.GRAMMAR,
            Capability.JSON_SCHEMA,
            Capability.LOGPROBS,
            # one prompt cache per slot, id_slot pins, slot save/restore copies (ORCH-2371)
            Capability.ENGINE_SLOTS,
        }
        if p.chat_template:
            caps.add(Capability.CHAT_TEMPLATE)
        if await self._embeddings_on():
            caps.add(Capability.EMBED)
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
        """ORCH-5011: rendered in process with the engine's own template once its
        probes agreed with the engine; else, or when the template raises, by the
        engine (whose error is then the answer)."""
        if not self._template_checked:
            await self._check_template()
        template = self._template
        if template is not None and template.renders(messages):
            try:
                prompt = template.render(messages)
            except Exception:  # a template's refusal: the engine's to answer
                pass
            else:
                self.local_renders += 1
                return prompt
        return await self._engine_template(messages)

    async def _check_template(self) -> None:
        """Once per engine process: trust the reported template only if it renders
        every probe exactly as ``/apply-template`` does."""
        async with self._template_lock:
            if self._template_checked:
                return
            try:
                p = self.decode(props_decoder, await self.call("GET", "/props"), "GET /props")
                template = compile_template(p.chat_template, p.bos_token, p.eos_token)
                if template is not None:
                    answers = [await self._engine_template(m) for m in PROBES]
                    local = [_renders(template, m) for m in PROBES]
                    if local == answers:
                        self._template = template
            except InvalidParams:
                pass  # the engine refused a probe: it keeps rendering (checked)
            except OrchError:
                return  # not reachable now: the next chat checks again
            self._template_checked = True

    async def _engine_template(self, messages: list[dict[str, str]]) -> str:
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

    async def copy_slot(self, source: int, target: int) -> bool:
        """ORCH-2369: copy engine slot ``source``'s cache into ``target`` with
        llama-server's slot save and restore (one file per source slot in its
        ``--slot-save-path``). False when the engine refused (no save path): the
        request is then prefilled as without the copy."""
        body = {"filename": f"llorch-slot-{source}.bin"}
        for slot, action in ((source, "save"), (target, "restore")):
            try:
                status, payload = await self.fetch("POST", f"/slots/{slot}?action={action}", body)
            except OrchError as exc:
                _log.debug("slot %s %s failed: %s", action, slot, exc)
                return False
            if status != 200:
                _log.debug("slot %s %s: %s %s", action, slot, status, payload[:200])
                return False
        return True

    async def stream_request(self, req: GenerateRequest) -> tuple[str, object]:
        source, target = req.engine_slot_source, req.engine_slot
        if source is not None and target is not None and source != target:
            await self.copy_slot(source, target)
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
            json_schema=msgspec.UNSET if req.json_schema is None else req.json_schema,
            # n_probs=0 reports nothing: the chosen token's own logprob needs 1
            n_probs=msgspec.UNSET if req.logprobs is None else max(1, req.logprobs),
            id_slot=msgspec.UNSET if req.engine_slot is None else req.engine_slot,  # ORCH-2356
        )

    def new_decoder(self, req: GenerateRequest) -> CompletionStream:
        return CompletionStream(req.logprobs)

    async def _embeddings_on(self) -> bool:
        """ORCH-9211: llama-server serves embeddings only when started with
        ``--embeddings`` (its /props does not say so): an empty request answers
        501 without, 400 with. Asked once per adapter (one per engine process)."""
        if self._embeddings is None:
            status, _ = await self.fetch("POST", "/v1/embeddings", {"input": []})
            self._embeddings = status != 501 and status != 404
        return self._embeddings

    async def embed(self, texts: list[str]) -> Embeddings:
        """ORCH-9210: ``/v1/embeddings`` (the pool's engine runs with a pooling type,
        ``--pooling mean`` when the pool manager starts it)."""
        payload = await self.call("POST", "/v1/embeddings", {"input": texts})
        got = self.decode(embeddings_decoder, payload, "POST /v1/embeddings")
        vectors = [d.embedding for d in sorted(got.data, key=lambda d: d.index)]
        if len(vectors) != len(texts):
            raise WorkerReset(
                f"POST /v1/embeddings: {len(vectors)} vectors for {len(texts)} inputs",
                engine=ENGINE,
            )
        return Embeddings(vectors=vectors, prompt_tokens=got.usage.prompt_tokens)


def _renders(template: ChatTemplate, messages: list[dict[str, str]]) -> str | None:
    try:
        return template.render(messages)
    except Exception:  # a probe the template refuses: not trusted
        return None
