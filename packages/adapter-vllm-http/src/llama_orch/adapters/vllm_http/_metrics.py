"""Parse a Prometheus text scrape into :class:`EngineMetrics`.

vLLM labels every sample (``model_name``, ``engine``); the normalised values
are the **sum over label sets** of one metric name. Names from llama-server
are recognised too, for when this adapter talks to llama-server's ``/v1`` API.
"""

from __future__ import annotations

from llama_orch.core.adapter_api import EngineMetrics

__all__ = ["NORMALISED", "to_engine_metrics"]

# metric name -> EngineMetrics field; earlier names win when several exist.
NORMALISED: dict[str, str] = {
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generated_tokens_total",
    "vllm:kv_cache_usage_perc": "kv_cache_usage_ratio",  # a 0..1 fraction despite the name
    "vllm:gpu_cache_usage_perc": "kv_cache_usage_ratio",  # V0 / older releases
    # ORCH-2322: prefix-cache hits and lookups, in tokens
    "vllm:prefix_cache_hits_total": "prefix_cache_hits_total",
    "vllm:prefix_cache_queries_total": "prefix_cache_queries_total",
    "llamacpp:requests_processing": "requests_running",
    "llamacpp:requests_deferred": "requests_waiting",
    "llamacpp:prompt_tokens_total": "prompt_tokens_total",
    "llamacpp:tokens_predicted_total": "generated_tokens_total",
    "llamacpp:kv_cache_usage_ratio": "kv_cache_usage_ratio",
}


def _base(name: str) -> str:
    return name.split("{", 1)[0]


def to_engine_metrics(samples: dict[str, float]) -> EngineMetrics:
    sums: dict[str, float] = {}
    for key, value in samples.items():
        base = _base(key)
        if base in NORMALISED:
            sums[base] = sums.get(base, 0.0) + value
    fields: dict[str, float] = {}
    for name, field in NORMALISED.items():
        if name in sums and field not in fields:
            fields[field] = sums[name]
    return EngineMetrics(**fields, raw=samples)
