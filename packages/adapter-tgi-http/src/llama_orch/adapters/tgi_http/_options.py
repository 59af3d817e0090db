"""Adapter options from ``AdapterTarget.options`` (all optional, type-checked)."""

from __future__ import annotations

import msgspec
from llama_orch.core.errors import InvalidParams

__all__ = ["TgiOptions", "parse_options"]


class TgiOptions(msgspec.Struct, frozen=True, kw_only=True):
    idle_timeout_s: float = 60.0  # max silence between two reads of a stream -> DecodeTimeout
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 30.0  # whole non-streaming call (info, tokenize, metrics)
    health_timeout_s: float = 5.0


def parse_options(raw: dict[str, object]) -> TgiOptions:
    try:
        opts = msgspec.convert(raw, TgiOptions)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid tgi-http adapter options: {exc}") from exc
    for name in opts.__struct_fields__:
        if getattr(opts, name) <= 0:
            raise InvalidParams(f"tgi-http option {name} must be > 0")
    return opts
