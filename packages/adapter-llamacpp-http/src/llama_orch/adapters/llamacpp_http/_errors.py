"""Translate llama-server answers and transport failures into orchestrator errors.

::

    HTTP answer before the stream            -> error
    ├── 503 (loading, unavailable_error)     -> PoolUnready
    ├── 400 exceed_context_size_error        -> InvalidParams (engine's message)
    ├── 400 invalid_request_error / other 4xx-> InvalidParams
    ├── 501 not_supported_error              -> InvalidParams (feature switched off)
    └── anything else                        -> WorkerReset
    data: {"error": ...} inside the stream   -> WorkerReset
    connection refused / reset / cut short   -> WorkerReset
    no bytes for idle_timeout_s              -> DecodeTimeout

Every raise site uses ``raise ... from exc``; aiohttp exceptions never leave
this package (STYLE rule 5).
"""

from __future__ import annotations

import msgspec
from llama_orch.core.errors import InvalidParams, OrchError, PoolUnready, WorkerReset

from ._wire import EngineError, error_decoder

__all__ = ["ENGINE", "error_from_response", "parse_error_body"]

ENGINE = "llamacpp-http"
_INVALID_TYPES = frozenset({"exceed_context_size_error", "invalid_request_error"})


def parse_error_body(body: bytes) -> EngineError | None:
    try:
        return error_decoder.decode(body).error
    except msgspec.DecodeError:
        return None


def error_from_response(status: int, body: bytes, what: str) -> OrchError:
    """The error for a non-200 answer to ``what`` (e.g. ``"POST /completion"``)."""
    err = parse_error_body(body)
    detail = err.message if err and err.message else body[:200].decode("utf-8", "replace")
    etype = err.type if err else ""
    message = f"{what}: HTTP {status}: {detail}" if detail else f"{what}: HTTP {status}"
    if status == 503 or etype == "unavailable_error":
        return PoolUnready(message, engine=ENGINE)
    if etype in _INVALID_TYPES or status in (400, 422) or status == 501:
        # The engine's own message ("request (N tokens) exceeds the available
        # context size (M tokens) ...") is what a client needs to fix the call.
        return InvalidParams(detail or message, engine=ENGINE)
    return WorkerReset(message, engine=ENGINE)
