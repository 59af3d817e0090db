"""Normalise llama-server's ``/metrics`` samples into :class:`EngineMetrics`.

Parsing is :func:`llama_orch.core.prometheus.parse_prometheus`.
"""

from __future__ import annotations

from llama_orch.core.adapter_api import EngineMetrics

__all__ = ["NORMALISED", "to_engine_metrics"]

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
    fields = {field: samples[name] for name, field in NORMALISED.items() if name in samples}
    return EngineMetrics(**fields, raw=samples)
