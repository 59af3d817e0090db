"""Parse llama-server's Prometheus text exposition into :class:`EngineMetrics`.

The parser is deliberately small: it skips ``#`` lines and blank lines and
reads ``name{labels} value [timestamp]`` samples. Keys of ``raw`` are the
sample names with their label set as written by the engine.
"""

from __future__ import annotations

from llama_orch.core.adapter_api import EngineMetrics

__all__ = ["NORMALISED", "parse_prometheus", "to_engine_metrics"]

# llama-server metric -> EngineMetrics field. kv_cache_usage_ratio only
# exists in older builds; it stays None when absent.
NORMALISED: dict[str, str] = {
    "llamacpp:requests_processing": "requests_running",
    "llamacpp:requests_deferred": "requests_waiting",
    "llamacpp:prompt_tokens_total": "prompt_tokens_total",
    "llamacpp:tokens_predicted_total": "generated_tokens_total",
    "llamacpp:kv_cache_usage_ratio": "kv_cache_usage_ratio",
}


def parse_prometheus(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            close = line.rfind("}")
            if close < 0:
                continue
            name, rest = line[: close + 1], line[close + 1 :].split()
        else:
            name, *rest = line.split()
        if not rest:
            continue
        try:
            samples[name] = float(rest[0])  # float() accepts NaN, +Inf, -Inf
        except ValueError:
            continue
    return samples


def to_engine_metrics(samples: dict[str, float]) -> EngineMetrics:
    fields = {field: samples[name] for name, field in NORMALISED.items() if name in samples}
    return EngineMetrics(**fields, raw=samples)
