"""Wire types of the OpenAI and Anthropic facades (the subset served).

Requests are tolerant by default, like the APIs they imitate accept what
their own SDKs send; ``X-Llorch-Strict: true`` decodes them with the strict
variant, which refuses unknown fields (ORCH-9114). Fields llama-orch cannot
honour yet are decoded so that the answer can name them (ORCH-9115).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "AnthropicMessage",
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingsRequest",
    "MessagesRequest",
    "ResponsesRequest",
    "StreamOptions",
    "TextPart",
    "Usage",
]


class TextPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class _Sampling(msgspec.Struct, kw_only=True):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    # llama-orch extras (SDKs pass them through ``extra_body``)
    priority: Literal["interactive", "batch"] | None = None
    deadline_ms: int | None = None
    session_id: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None


class ChatRequest(_Sampling, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    web_search_options: dict[str, Any] | None = None


class StrictChatRequest(ChatRequest, kw_only=True, forbid_unknown_fields=True):
    pass


class CompletionRequest(_Sampling, kw_only=True):
    prompt: str | list[str]
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class StrictCompletionRequest(CompletionRequest, kw_only=True, forbid_unknown_fields=True):
    pass


class AnthropicPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None
    cache_control: dict[str, Any] | None = None
    # tool_use (assistant) and tool_result (user) blocks (ORCH-9245)
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None


class AnthropicMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[AnthropicPart]


class MessagesRequest(msgspec.Struct, kw_only=True):
    model: str
    max_tokens: int
    messages: list[AnthropicMessage]
    system: str | list[AnthropicPart] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    thinking: dict[str, Any] | None = None
    service_tier: str | None = None
    # llama-orch extras
    priority: Literal["interactive", "batch"] | None = None
    deadline_ms: int | None = None
    session_id: str | None = None
    seed: int | None = None


class StrictMessagesRequest(MessagesRequest, kw_only=True, forbid_unknown_fields=True):
    pass


class ResponsesRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    background: bool = False
    store: bool | None = None
    metadata: dict[str, str] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    text: dict[str, Any] | None = None
    previous_response_id: str | None = None
    conversation: Any = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None
    user: str | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None
    include: list[str] | None = None
    stream_options: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # llama-orch extras
    priority: Literal["interactive", "batch"] | None = None
    deadline_ms: int | None = None
    session_id: str | None = None
    seed: int | None = None


class StrictResponsesRequest(ResponsesRequest, kw_only=True, forbid_unknown_fields=True):
    pass


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[Any]  # texts; token arrays are refused by name
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class StrictEmbeddingsRequest(EmbeddingsRequest, kw_only=True, forbid_unknown_fields=True):
    pass


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
