"""Adapter options from ``AdapterTarget.options``: the shared HTTP timeouts
plus what vLLM's API does not tell (all optional, type-checked)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from llama_orch.adapter_http import HttpTimeouts, Positive
from llama_orch.adapter_http import parse_options as _parse

__all__ = ["VllmOptions", "parse_options"]


class VllmOptions(HttpTimeouts, frozen=True, kw_only=True):
    # The served model name; empty = the first entry of GET /v1/models.
    served_model: str = ""
    # vLLM does not expose --max-num-seqs: the launcher states it here.
    slots: Positive = 1
    # Per-request context; 0 = max_model_len from /v1/models (llama-server:
    # its /v1/models has no max_model_len, so state -c / --parallel here).
    ctx: Annotated[int, msgspec.Meta(ge=0)] = 0


def parse_options(raw: dict[str, object]) -> VllmOptions:
    return _parse(raw, VllmOptions, "vllm-http")
