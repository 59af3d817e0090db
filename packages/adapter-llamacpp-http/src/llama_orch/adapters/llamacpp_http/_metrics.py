"""Normalise llama-server's ``/metrics`` samples into :class:`EngineMetrics`.

Parsing is :func:`llama_orch.core.prometheus.parse_prometheus`.
"""

from __future__ import annotations

import msgspec
from llama_orch.core.adapter_api import EngineMetrics

__all__ = ["NORMALISED", "kv_usage_from_slots", "to_engine_metrics"]

# llama-server metric -> EngineMetrics field. kv_cache_usage_ratio only
# exists in older builds; it stays None when absent.
NORMALISED: dict[str, str] = {
    "llamacpp:requests_processing": "requests_running",
    "llamacpp:requests_deferred": "requests_waiting",
    "llamacpp:prompt_tokens_total": "prompt_tokens_total",
    "llamacpp:tokens_predicted_total": "generated_tokens_total",
    "llamacpp:kv_cache_usage_ratio": "kv_cache_usage_ratio",
}


def to_engine_metrics(samples: dict[str, float]) -> EngineMetrics:
    fields: dict[str, float] = {
        field: samples[name] for name, field in NORMALISED.items() if name in samples
    }
    # ORCH-2322: llamacpp:prompt_tokens_total counts the prompt tokens evaluated,
    # llamacpp:prompt_tokens_cached_total those taken from the cache instead.
    cached = samples.get("llamacpp:prompt_tokens_cached_total")
    if cached is not None:
        fields["prefix_cache_hits_total"] = cached
        fields["prefix_cache_queries_total"] = cached + samples.get(
            "llamacpp:prompt_tokens_total", 0.0
        )
    return EngineMetrics(**fields, raw=samples)


class _NextToken(msgspec.Struct):
    n_decoded: int = 0


class _Slot(msgspec.Struct):
    n_ctx: int = 0
    is_processing: bool = False
    n_prompt_tokens: int = 0
    next_token: list[_NextToken] = []


_slots_decoder = msgspec.json.Decoder(list[_Slot])


def kv_usage_from_slots(payload: bytes) -> float | None:
    """Context cells held by running requests over all slots' context, from ``/slots``:
    prompt tokens plus decoded tokens of each processing slot. ``None`` when the
    answer is not a slot list."""
    try:
        slots = _slots_decoder.decode(payload)
    except msgspec.DecodeError:
        return None
    total = sum(s.n_ctx for s in slots)
    if total <= 0:
        return None
    used = sum(
        s.n_prompt_tokens + sum(t.n_decoded for t in s.next_token) for s in slots if s.is_processing
    )
    return min(1.0, used / total)
