"""The vLLM adapter: OpenAI-compatible completions over HTTP.

Transport, streaming loop and cancel by disconnect come from
:class:`llama_orch.adapter_http.HttpAdapter`. vLLM aborts a request inside
``AsyncLLM.generate`` when its client disconnects (ORCH-3006, ORCH-4061).
"""

from __future__ import annotations

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
from llama_orch.core.errors import InvalidParams, WorkerReset
from llama_orch.core.prometheus import parse_prometheus

from ._errors import ENGINE, error_from_response
from ._metrics import to_engine_metrics
from ._options import VllmOptions
from ._stream import CompletionsStream
from ._wire import (
    CompletionsRequest,
    ModelCard,
    StreamOptions,
    detokenize_decoder,
    embeddings_decoder,
    models_decoder,
    tokenize_decoder,
    version_decoder,
)

__all__ = ["VllmHttpAdapter"]


def _meta_int(card: ModelCard, key: str) -> int:
    """llama-server's ``/v1/models`` ``meta`` (``n_ctx`` is the per-slot context)."""
    value = (card.meta or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class VllmHttpAdapter(HttpAdapter):
    """ORCH-4062 health: vLLM opens its port only once the model is loaded, so
    "loading" is "connection refused" here; the pool manager's start-up grace
    period turns that into not-ready-yet instead of a failure."""

    engine: ClassVar[str] = ENGINE
    options: VllmOptions
    options_type = VllmOptions
    error_table = staticmethod(error_from_response)

    def __init__(self, target: AdapterTarget) -> None:
        super().__init__(target)
        self._model: ModelCard | None = None
        self._chat: bool | None = None  # the engine renders chat templates (ORCH-9230)
        self._vllm: bool | None = None  # GET /version answers: vLLM itself (ORCH-9231)
        self._embed: bool | None = None  # a pooling engine: embeddings only (ORCH-9280)

    async def _served_model(self) -> ModelCard:
        if self._model is None:
            payload = await self.call("GET", "/v1/models")
            cards = self.decode(models_decoder, payload, "GET /v1/models").data
            want = self.options.served_model
            match = [c for c in cards if c.id == want] if want else cards[:1]
            if not match:
                served = [c.id for c in cards]
                raise WorkerReset(
                    f"engine does not serve {want!r} (serves {served})", engine=ENGINE
                )
            self._model = match[0]
        return self._model

    async def _is_vllm(self) -> bool:
        if self._vllm is None:
            status, payload = await self.fetch("GET", "/version")
            try:
                self._vllm = status == 200 and bool(version_decoder.decode(payload).version)
            except msgspec.DecodeError:
                self._vllm = False
        return self._vllm

    async def _engine_version(self) -> str:
        status, payload = await self.fetch("GET", "/version")
        if status == 200:
            try:
                return f"vllm-{self.decode(version_decoder, payload, 'GET /version').version}"
            except WorkerReset:
                pass
        return "openai-compatible (no /version)"

    async def props(self) -> EngineProps:
        """ORCH-4063: ctx from ``max_model_len``; slots from the launcher (option)."""
        card = await self._served_model()
        ctx = self.options.ctx or card.max_model_len or _meta_int(card, "n_ctx")
        if ctx <= 0:
            raise WorkerReset(
                "GET /v1/models states no context size; set the adapter option 'ctx'",
                engine=ENGINE,
            )
        t = self.target
        return EngineProps(
            engine=ENGINE,
            engine_version=t.engine_version or await self._engine_version(),
            model_ref=t.model_ref or card.root or card.id,
            # vLLM exposes no digest of the weights: only the launcher knows
            # what it converted the model from (see README).
            model_digest=t.model_digest,
            slots=self.options.slots,
            ctx=ctx,
            capabilities=await self._capabilities(),
        )

    async def _capabilities(self) -> frozenset[Capability]:
        base = {Capability.TOKENIZE, Capability.METRICS}
        embeds = await self._embeds()
        if embeds and await self._is_vllm():  # a pooling runner generates nothing (ORCH-9280)
            return frozenset(base | {Capability.EMBED, Capability.EMBED_ONLY})
        return frozenset(
            base
            | {Capability.SEEDED_SAMPLING}
            | ({Capability.EMBED} if embeds else set())  # llama-server with --embeddings
            | ({Capability.CHAT_TEMPLATE} if await self._renders_chat() else set())
            # vLLM's own request fields (ORCH-9231), not llama-server's /v1 dialect
            | ({Capability.JSON_SCHEMA, Capability.LOGPROBS} if await self._is_vllm() else set())
        )

    async def _embeds(self) -> bool:
        """ORCH-9280: vLLM serves ``/v1/embeddings`` only from a pooling runner (and
        then no completions); a generating vLLM answers 404, llama-server without
        ``--embeddings`` 501. An empty request is refused (400) where it is served.
        Asked once per engine process."""
        if self._embed is None:
            card = await self._served_model()
            status, _ = await self.fetch("POST", "/v1/embeddings", {"model": card.id, "input": []})
            self._embed = status not in (404, 405, 501)
        return self._embed

    async def embed(self, texts: list[str]) -> Embeddings:
        """ORCH-9280: ``/v1/embeddings`` of a pooling engine, vectors in input order."""
        card = await self._served_model()
        body = {"model": card.id, "input": texts, "encoding_format": "float"}
        payload = await self.call("POST", "/v1/embeddings", body)
        got = self.decode(embeddings_decoder, payload, "POST /v1/embeddings")
        vectors = [d.embedding for d in sorted(got.data, key=lambda d: d.index)]
        if len(vectors) != len(texts):
            raise WorkerReset(
                f"POST /v1/embeddings: {len(vectors)} vectors for {len(texts)} inputs",
                engine=ENGINE,
            )
        return Embeddings(vectors=vectors, prompt_tokens=got.usage.prompt_tokens)

    async def _render(self, messages: list[dict[str, str]]) -> tuple[int, bytes]:
        """vLLM's ``/tokenize`` with ``messages`` applies the model's chat template
        (generation prompt included); ``/detokenize`` gives the text back, special
        tokens kept, which ``/v1/completions`` reads as the same tokens."""
        card = await self._served_model()
        body = {"model": card.id, "messages": messages, "add_generation_prompt": True}
        status, payload = await self.fetch("POST", "/tokenize", body)
        if status != 200:
            return status, payload
        tokens = self.decode(tokenize_decoder, payload, "POST /tokenize").tokens
        return await self.fetch("POST", "/detokenize", {"model": card.id, "tokens": tokens})

    async def _renders_chat(self) -> bool:
        """ORCH-9230: asked once per engine process; an engine without the chat
        form of ``/tokenize`` (or a model without a template) answers an error."""
        if self._chat is None:
            # llama-server's /tokenize ignores `messages` and answers 200: only a
            # rendered prompt that holds the message counts
            status, payload = await self._render([{"role": "user", "content": "ping-9230"}])
            try:
                rendered = detokenize_decoder.decode(payload).prompt if status == 200 else ""
            except msgspec.DecodeError:
                rendered = ""
            self._chat = "ping-9230" in rendered
        return self._chat

    async def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """ORCH-9230: the prompt vLLM's own chat route would generate from."""
        if not await self._renders_chat():
            raise InvalidParams(
                "this engine renders no chat template (vLLM's /tokenize with messages)",
                engine=ENGINE,
            )
        status, payload = await self._render(messages)
        if status != 200:
            raise self.error_from_response(status, payload, "POST /tokenize (chat)")
        return self.decode(detokenize_decoder, payload, "POST /detokenize").prompt

    async def tokenize(self, text: str) -> list[int]:
        """ORCH-4064: counted as a completions prompt is (special tokens added).

        The body names the text for both dialects: ``prompt`` (vLLM) and
        ``content`` (llama-server); each ignores the other's fields.
        """
        card = await self._served_model()
        body = {
            "model": card.id,
            "prompt": text,
            "add_special_tokens": True,
            "content": text,
            "add_special": True,
        }
        payload = await self.call("POST", "/tokenize", body)
        return self.decode(tokenize_decoder, payload, "POST /tokenize").tokens

    async def metrics(self) -> EngineMetrics:
        """ORCH-4065: ``vllm:`` names (summed over labels) normalised."""
        payload = await self.call("GET", "/metrics")
        return to_engine_metrics(parse_prometheus(payload.decode("utf-8", "replace")))

    async def stream_request(self, req: GenerateRequest) -> tuple[str, object]:
        """ORCH-4060: always an explicit max_tokens (vLLM's default is 16)."""
        card = await self._served_model()
        penalty = req.repeat_penalty if req.repeat_penalty != 1.0 else None
        return "/v1/completions", CompletionsRequest(
            model=card.id,
            prompt=req.prompt,
            max_tokens=req.max_tokens,
            seed=req.seed,
            temperature=req.temperature,
            top_p=req.top_p,
            min_p=req.min_p,
            stream=True,
            stream_options=StreamOptions(include_usage=True),
            return_token_ids=True,
            top_k=req.top_k if req.top_k > 0 else None,
            stop=list(req.stop) or None,
            repetition_penalty=penalty,
            repeat_penalty=penalty,
            cache_prompt=None if req.cache_prompt else False,
            # logprobs=0 still reports the chosen token's; alternatives cut to N
            logprobs=None if req.logprobs is None else max(1, req.logprobs),
            structured_outputs=None if req.json_schema is None else {"json": req.json_schema},
        )

    def new_decoder(self, req: GenerateRequest) -> CompletionsStream:
        return CompletionsStream(asked_stop=bool(req.stop), top_logprobs=req.logprobs)
