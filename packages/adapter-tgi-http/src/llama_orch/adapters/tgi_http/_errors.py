"""Translate TGI answers and transport failures into orchestrator errors.

::

    HTTP answer (non-streaming routes, or before a stream)
    ├── 422 validation / 400 / 404 / 413       -> InvalidParams
    ├── 503                                     -> PoolUnready
    └── anything else (424 generation, 429, 5xx)-> WorkerReset
    data:{"error": ..., "error_type": ...} inside an HTTP 200 stream
    ├── error_type "validation" before a token  -> InvalidParams (e.g. context overflow)
    └── any other, or after a token             -> WorkerReset
    connection refused / reset / cut short      -> WorkerReset
    no bytes for idle_timeout_s                 -> DecodeTimeout
"""

from __future__ import annotations

import msgspec
from llama_orch.core.errors import InvalidParams, OrchError, PoolUnready, WorkerReset

from ._wire import ErrorBody, error_decoder

__all__ = ["ENGINE", "error_from_response", "error_in_stream", "parse_error_body"]

ENGINE = "tgi-http"


def parse_error_body(body: bytes) -> ErrorBody | None:
    try:
        return error_decoder.decode(body)
    except msgspec.DecodeError:
        return None


def error_from_response(status: int, body: bytes, what: str) -> OrchError:
    err = parse_error_body(body)
    detail = err.error if err and err.error else body[:200].decode("utf-8", "replace")
    message = f"{what}: HTTP {status}: {detail}" if detail else f"{what}: HTTP {status}"
    if status == 503:
        return PoolUnready(message, engine=ENGINE)
    if status in (400, 404, 413, 422) or (err is not None and err.error_type == "validation"):
        return InvalidParams(detail or message, engine=ENGINE)
    return WorkerReset(message, engine=ENGINE)


def error_in_stream(message: str, error_type: str, *, tokens_seen: int) -> OrchError:
    if error_type == "validation" and tokens_seen == 0:
        # /generate_stream answers 200 even for a request it rejects.
        return InvalidParams(message, engine=ENGINE)
    return WorkerReset(
        f"engine error inside the stream ({error_type or 'unknown'}): {message}", engine=ENGINE
    )
