"""Triton's Prometheus scrape (metrics port) and model statistics -> :class:`EngineMetrics`.

Triton counts requests, not tokens: ``prompt_tokens_total`` and
``generated_tokens_total`` stay ``None`` unless a backend exports token
metrics. ``requests_waiting`` is ``nv_inference_pending_request_count``
(requests queued for execution) summed over models; TRT-LLM's
``nv_trt_llm_request_metrics{request_type="active"|"waiting"}`` and
``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}`` fill
running/waiting/KV when present.
"""

from __future__ import annotations

from llama_orch.core.adapter_api import EngineMetrics

__all__ = ["to_engine_metrics"]


def _sum(samples: dict[str, float], name: str, model: str, label: str = "") -> float | None:
    total, seen = 0.0, False
    for key, value in samples.items():
        base, _, labels = key.partition("{")
        if base != name:
            continue
        if model and labels and f'model="{model}"' not in labels:
            continue
        if label and label not in labels:
            continue
        total += value
        seen = True
    return total if seen else None


def to_engine_metrics(samples: dict[str, float], model: str) -> EngineMetrics:
    running = _sum(samples, "nv_trt_llm_request_metrics", "", 'request_type="active"')
    waiting = _sum(samples, "nv_trt_llm_request_metrics", "", 'request_type="waiting"')
    if waiting is None:
        waiting = _sum(samples, "nv_inference_pending_request_count", model)
    kv = _sum(samples, "nv_trt_llm_kv_cache_block_metrics", "", 'kv_cache_block_type="fraction"')
    return EngineMetrics(
        requests_running=running,
        requests_waiting=waiting,
        kv_cache_usage_ratio=kv,
        raw=samples,
    )
