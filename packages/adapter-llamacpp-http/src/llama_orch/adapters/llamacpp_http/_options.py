"""Adapter options from ``AdapterTarget.options`` (all optional).

Unknown keys are ignored: the pool manager may keep engine launch settings in
the same mapping. Known keys are type-checked.
"""

from __future__ import annotations

import msgspec
from llama_orch.core.errors import InvalidParams

__all__ = ["LlamaCppOptions", "parse_options"]


class LlamaCppOptions(msgspec.Struct, frozen=True, kw_only=True):
    idle_timeout_s: float = 60.0  # max silence between two reads of a stream -> DecodeTimeout
    connect_timeout_s: float = 10.0  # TCP connect
    request_timeout_s: float = 30.0  # whole non-streaming call (props, tokenize, metrics...)
    health_timeout_s: float = 5.0  # a slower /health answer counts as not live


def parse_options(raw: dict[str, object]) -> LlamaCppOptions:
    try:
        opts = msgspec.convert(raw, LlamaCppOptions)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid llamacpp-http adapter options: {exc}") from exc
    for name in opts.__struct_fields__:
        if getattr(opts, name) <= 0:
            raise InvalidParams(f"llamacpp-http option {name} must be > 0")
    return opts
