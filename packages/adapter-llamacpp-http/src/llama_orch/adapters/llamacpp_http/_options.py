"""Adapter options from ``AdapterTarget.options``: the shared HTTP timeouts."""

from __future__ import annotations

from llama_orch.adapter_http import HttpTimeouts

__all__ = ["LlamaCppOptions"]


class LlamaCppOptions(HttpTimeouts, frozen=True, kw_only=True):
    pass
