"""Adapter options from ``AdapterTarget.options``.

``model`` (the Triton model name) and ``ctx`` are required: Triton knows
neither which model is "the" LLM nor its context window. Unknown keys are
ignored: the pool manager may keep launch settings in the same mapping.
"""

from __future__ import annotations

import msgspec
from llama_orch.core.errors import InvalidParams

__all__ = ["TritonOptions", "parse_options"]


class TritonOptions(msgspec.Struct, frozen=True, kw_only=True):
    model: str  # the decoupled text model to call
    ctx: int  # the model's context window, in tokens
    model_version: str = ""  # "" = the version Triton picks
    slots: int = 1  # concurrent generations the model instance(s) run
    # Metrics live on a separate port (Triton default 8002); "" = same host, port 8002.
    metrics_url: str = ""
    # Triton restricts /v2/models/*/stats behind this header (PyTriton always does).
    access_token: str = ""
    idle_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    health_timeout_s: float = 5.0


def parse_options(raw: dict[str, object]) -> TritonOptions:
    known = {k: v for k, v in raw.items() if k in TritonOptions.__struct_fields__}
    try:
        opts = msgspec.convert(known, TritonOptions)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid triton adapter options: {exc}") from exc
    for name in (
        "ctx",
        "slots",
        "idle_timeout_s",
        "connect_timeout_s",
        "request_timeout_s",
        "health_timeout_s",
    ):
        if getattr(opts, name) <= 0:
            raise InvalidParams(f"triton option {name} must be > 0")
    if not opts.model:
        raise InvalidParams("triton option model must name the Triton model")
    return opts
