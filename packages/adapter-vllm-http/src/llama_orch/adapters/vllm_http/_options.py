"""Adapter options from ``AdapterTarget.options`` (all optional).

Unknown keys are ignored: the pool manager may keep engine launch settings in
the same mapping. Known keys are type-checked.
"""

from __future__ import annotations

import msgspec
from llama_orch.core.errors import InvalidParams

__all__ = ["VllmOptions", "parse_options"]


class VllmOptions(msgspec.Struct, frozen=True, kw_only=True):
    # The served model name; empty = the first entry of GET /v1/models.
    served_model: str = ""
    # vLLM does not expose --max-num-seqs: the launcher states it here.
    slots: int = 1
    # Per-request context; 0 = max_model_len from /v1/models (llama-server:
    # its /v1/models has no max_model_len, so state -c / --parallel here).
    ctx: int = 0
    idle_timeout_s: float = 60.0  # max silence between two reads of a stream -> DecodeTimeout
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 30.0  # whole non-streaming call
    health_timeout_s: float = 5.0


def parse_options(raw: dict[str, object]) -> VllmOptions:
    known = {k: v for k, v in raw.items() if k in VllmOptions.__struct_fields__}
    try:
        opts = msgspec.convert(known, VllmOptions)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid vllm-http adapter options: {exc}") from exc
    for name in ("slots", "idle_timeout_s", "connect_timeout_s", "request_timeout_s"):
        if getattr(opts, name) <= 0:
            raise InvalidParams(f"vllm-http option {name} must be > 0")
    if opts.ctx < 0 or opts.health_timeout_s <= 0:
        raise InvalidParams("vllm-http options ctx must be >= 0 and health_timeout_s > 0")
    return opts
