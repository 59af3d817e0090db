"""msgspec structs for TGI's native API (text-generation-inference 2.x/3.x).

Field names follow TGI's documented OpenAPI (``GenerateRequest``,
``GenerateParameters``, ``StreamResponse``, ``StreamDetails``, ``Info``,
``ErrorResponse``). Responses are decoded tolerantly: unknown fields are
ignored and most fields defaulted, so a newer TGI does not break the adapter.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "ErrorBody",
    "GenerateBody",
    "GenerateParameters",
    "InfoResponse",
    "StreamDetails",
    "StreamEvent",
    "StreamToken",
    "TokenizedToken",
    "encoder",
    "error_decoder",
    "info_decoder",
    "stream_event_decoder",
    "tokenize_decoder",
]


class GenerateParameters(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``None`` fields are left out: TGI validates every field it receives
    (``temperature`` > 0, ``top_k`` > 0, 0 < ``top_p`` < 1) and any sampling
    warper it receives switches sampling on."""

    max_new_tokens: int
    details: bool  # no default: always sent (TGI's default is false)
    do_sample: bool
    seed: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] = []


class GenerateBody(msgspec.Struct):
    inputs: str
    parameters: GenerateParameters


class StreamToken(msgspec.Struct, kw_only=True):
    id: int = 0
    text: str = ""
    special: bool = False


class StreamDetails(msgspec.Struct, kw_only=True):
    finish_reason: str = ""
    generated_tokens: int | None = None
    seed: int | None = None
    input_length: int | None = None


class StreamEvent(msgspec.Struct, kw_only=True):
    """One ``data:`` event: a token, the final token (``generated_text`` set), or an error."""

    index: int = 0
    token: StreamToken | None = None
    generated_text: str | None = None
    details: StreamDetails | None = None
    error: str | None = None
    error_type: str = ""


class ErrorBody(msgspec.Struct, kw_only=True):
    error: str = ""
    error_type: str = ""


class InfoResponse(msgspec.Struct, kw_only=True):
    model_id: str = ""
    model_sha: str | None = None
    version: str = ""
    sha: str | None = None
    max_concurrent_requests: int = 0
    max_input_tokens: int | None = None
    max_input_length: int | None = None  # the name before TGI 2.1
    max_total_tokens: int = 0


class TokenizedToken(msgspec.Struct, kw_only=True):
    id: int
    text: str = ""


encoder = msgspec.json.Encoder()
stream_event_decoder = msgspec.json.Decoder(StreamEvent)
error_decoder = msgspec.json.Decoder(ErrorBody)
info_decoder = msgspec.json.Decoder(InfoResponse)
tokenize_decoder = msgspec.json.Decoder(list[TokenizedToken])
