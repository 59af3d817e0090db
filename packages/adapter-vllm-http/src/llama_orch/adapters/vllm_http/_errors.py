"""Translate OpenAI-compatible server answers into orchestrator errors.

::

    HTTP answer before the stream                 -> error
    ├── 503 (vLLM engine dead, llama-server loading) -> PoolUnready
    ├── 400 / 422 (bad request, context overflow) -> InvalidParams (engine's message)
    └── anything else (404 unknown model, 5xx)    -> WorkerReset
    data: {"error": ...} inside a 200 stream      -> WorkerReset, even when a
                                                     [DONE] follows (vLLM does that)
    connection refused / reset / cut short        -> WorkerReset
    no bytes for idle_timeout_s                   -> DecodeTimeout

aiohttp exceptions never leave this package (STYLE rule 5).
"""

from __future__ import annotations

import msgspec
from llama_orch.core.errors import InvalidParams, OrchError, PoolUnready, WorkerReset

from ._wire import EngineError, error_decoder

__all__ = ["ENGINE", "error_from_response", "error_message"]

ENGINE = "vllm-http"


def error_message(err: EngineError | str | None, fallback: str = "") -> str:
    if isinstance(err, EngineError):
        return err.message or err.type or fallback
    return err or fallback


def _parse(body: bytes) -> str:
    try:
        env = error_decoder.decode(body)
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", "replace")
    return error_message(env.error, env.message)


def error_from_response(status: int, body: bytes, what: str) -> OrchError:
    """The error for a non-200 answer to ``what`` (e.g. ``"POST /v1/completions"``)."""
    detail = _parse(body)
    message = f"{what}: HTTP {status}: {detail}" if detail else f"{what}: HTTP {status}"
    if status == 503:
        return PoolUnready(message, engine=ENGINE)
    if status in (400, 422):
        # The engine's own words ("This model's maximum context length is ...")
        # are what a client needs to fix the call.
        return InvalidParams(detail or message, engine=ENGINE)
    return WorkerReset(message, engine=ENGINE)
