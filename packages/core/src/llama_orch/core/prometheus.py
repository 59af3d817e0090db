"""Parse the Prometheus text exposition an engine serves on ``/metrics``.

Shared by the HTTP adapters (ORCH-3009). Deliberately small: it skips ``#``
and blank lines and reads ``name{labels} value [timestamp]`` samples. Keys
are the sample names with their label set as the engine wrote it.
"""

from __future__ import annotations

__all__ = ["parse_prometheus"]


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
