"""Translate Triton answers into orchestrator errors.

::

    HTTP answer before the stream                     -> error
    ├── 503 UNAVAILABLE / 400 "... not ready"         -> PoolUnready
    ├── 400 (INVALID_ARG, and any model failure before
    │        its first response, e.g. context overflow) -> InvalidParams
    ├── 404 (unknown model)                           -> WorkerReset
    └── anything else                                 -> WorkerReset
    data: {"error": ...} inside a 200 stream          -> WorkerReset
    connection refused / reset / cut short            -> WorkerReset
    no bytes for idle_timeout_s                       -> DecodeTimeout

Triton writes an error body as ``{"error": "..."}``, and on
``generate_stream`` even a first-response failure as ``data: {"error": ...}``;
both are read. A Python model's traceback is cut to its last line.
aiohttp exceptions never leave this package (STYLE rule 5).
"""

from __future__ import annotations

import msgspec
from llama_orch.core.errors import InvalidParams, OrchError, PoolUnready, WorkerReset

from ._wire import error_decoder

__all__ = ["ENGINE", "error_from_response", "short_error"]

ENGINE = "triton"
# How Triton words "the server or model is not ready" in a 400 answer.
_NOT_READY = ("not ready", "not at ready state")


def short_error(message: str) -> str:
    """The informative part of a Triton error (a Python traceback's last line)."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Traceback"):
        return lines[-1]
    return message.strip()


def _parse(body: bytes) -> str:
    text = body.strip()
    if text.startswith(b"data:"):
        text = text[5:].strip()
    try:
        return short_error(error_decoder.decode(text).error)
    except msgspec.DecodeError:
        return body[:300].decode("utf-8", "replace")


def error_from_response(status: int, body: bytes, what: str) -> OrchError:
    detail = _parse(body)
    message = f"{what}: HTTP {status}: {detail}" if detail else f"{what}: HTTP {status}"
    low = detail.lower()
    if status == 503 or (status == 400 and any(m in low for m in _NOT_READY)):
        return PoolUnready(message, engine=ENGINE)
    if status in (400, 422):
        return InvalidParams(detail or message, engine=ENGINE)
    return WorkerReset(message, engine=ENGINE)
