"""msgspec structs for the OpenAI-compatible completions API (vLLM, llama-server /v1).

Requests are encoded from :class:`CompletionsRequest`; answers are decoded
tolerantly (unknown fields ignored, most fields defaulted) so that a newer
engine that adds fields does not break the adapter (STYLE rule 6).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "Choice",
    "CompletionsRequest",
    "DetokenizeResponse",
    "EmbeddingsResponse",
    "EngineError",
    "ErrorEnvelope",
    "ModelCard",
    "ModelsResponse",
    "StreamChunk",
    "StreamOptions",
    "TokenizeResponse",
    "Usage",
    "VersionResponse",
    "detokenize_decoder",
    "embeddings_decoder",
    "encoder",
    "error_decoder",
    "models_decoder",
    "stream_chunk_decoder",
    "tokenize_decoder",
    "version_decoder",
]


class StreamOptions(msgspec.Struct):
    include_usage: bool = True


class CompletionsRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Body of ``POST /v1/completions``. ``max_tokens`` is always sent (vLLM's
    default is 16, llama-server's is unlimited)."""

    model: str
    prompt: str
    max_tokens: int
    seed: int
    temperature: float
    top_p: float
    min_p: float
    # No defaults for these three: omit_defaults would leave them out.
    stream: bool
    stream_options: StreamOptions
    # vLLM: the per-chunk token ids (exact token counts); ignored by llama-server.
    return_token_ids: bool
    top_k: int | None = None  # omitted = engine default (disabled)
    stop: list[str] | None = None
    repetition_penalty: float | None = None  # vLLM's name
    repeat_penalty: float | None = None  # llama-server's name
    cache_prompt: bool | None = None  # llama-server only (KV reuse can change logits)
    # vLLM only (ORCH-9231): alternatives per token, and output held to a JSON schema
    logprobs: int | None = None
    structured_outputs: dict[str, Any] | None = None


class EngineError(msgspec.Struct):
    message: str = ""
    type: str = ""
    # An int on released vLLM and llama-server, a string on vLLM's newest main.
    code: int | str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: EngineError | str | None = None
    # vLLM up to ~0.9 answered a flat {"object":"error","message":...}.
    message: str = ""
    object: str = ""


class ChoiceLogprobs(msgspec.Struct):
    """The legacy completions ``logprobs`` of one chunk's tokens."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []


class Choice(msgspec.Struct):
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    # vLLM: the matched stop string or token id; null for EOS. Absent (UNSET)
    # on llama-server, which cannot tell EOS from a stop string here.
    stop_reason: str | int | msgspec.UnsetType | None = msgspec.UNSET
    token_ids: list[int] | None = None
    logprobs: ChoiceLogprobs | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class StreamChunk(msgspec.Struct):
    choices: list[Choice] = []
    usage: Usage | None = None
    error: EngineError | str | None = None


class ModelCard(msgspec.Struct):
    id: str
    root: str | None = None
    max_model_len: int | None = None
    owned_by: str = ""
    meta: dict[str, object] | None = None  # llama-server: n_ctx_train, n_params, ...


class ModelsResponse(msgspec.Struct):
    data: list[ModelCard] = []


class VersionResponse(msgspec.Struct):
    version: str


class TokenizeResponse(msgspec.Struct):
    tokens: list[int]


class DetokenizeResponse(msgspec.Struct):
    prompt: str


class EmbeddingData(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class EmbeddingsResponse(msgspec.Struct):
    """``POST /v1/embeddings`` of a pooling engine (ORCH-9280)."""

    data: list[EmbeddingData]
    usage: Usage = msgspec.field(default_factory=Usage)


encoder = msgspec.json.Encoder()
error_decoder = msgspec.json.Decoder(ErrorEnvelope)
stream_chunk_decoder = msgspec.json.Decoder(StreamChunk)
models_decoder = msgspec.json.Decoder(ModelsResponse)
version_decoder = msgspec.json.Decoder(VersionResponse)
tokenize_decoder = msgspec.json.Decoder(TokenizeResponse)
detokenize_decoder = msgspec.json.Decoder(DetokenizeResponse)
embeddings_decoder = msgspec.json.Decoder(EmbeddingsResponse)
