"""Adapter options from ``AdapterTarget.options``: the shared HTTP timeouts."""

from __future__ import annotations

from llama_orch.adapter_http import HttpTimeouts
from llama_orch.adapter_http import parse_options as _parse

__all__ = ["LlamaCppOptions", "parse_options"]


class LlamaCppOptions(HttpTimeouts, frozen=True, kw_only=True):
    pass


def parse_options(raw: dict[str, object]) -> LlamaCppOptions:
    return _parse(raw, LlamaCppOptions, "llamacpp-http")
