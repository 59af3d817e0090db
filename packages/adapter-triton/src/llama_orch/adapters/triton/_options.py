"""Adapter options from ``AdapterTarget.options``.

``model`` (the Triton model name) and ``ctx`` are required: Triton knows
neither which model is "the" LLM nor its context window. Unknown keys are
ignored: the pool manager may keep launch settings in the same mapping.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from llama_orch.adapter_http import HttpTimeouts, Positive

__all__ = ["TritonOptions"]


class TritonOptions(HttpTimeouts, frozen=True, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1)]  # the decoupled text model to call
    ctx: Positive  # the model's context window, in tokens
    model_version: str = ""  # "" = the version Triton picks
    slots: Positive = 1  # concurrent generations the model instance(s) run
    # Metrics live on a separate port (Triton default 8002); "" = same host, port 8002.
    metrics_url: str = ""
    # Triton restricts /v2/models/*/stats behind this header (PyTriton always does).
    access_token: str = ""
