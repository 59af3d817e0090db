"""``bench/ha_relay.py --repeats R``: the rows measured interleaved (issue #13, ORCH-2620).

One run of ``ha_relay.py`` measured each row once, one after the other: the rows'
CPU per relayed token moved by about 3 µs and per request by about 1 ms between
rows that do the same work (``memory x1`` read +3.3 µs/token over ``none x1`` in
session 14), as large as the goals. Here every row's orchestratord runs for the
whole run, and the run makes ``R`` rounds; each round measures every row once, in
an order rotated by one each round and reversed every other round (round-robin
and ABBA: each row takes each place), the same task mix each time (a 1-token and a
128-token closed loop, back to back). Per round and row:

* **µs per relayed token** = (CPU per 128-token task - CPU per 1-token task) / 127;
* **fixed ms per request** = CPU per 1-token task - one token's CPU (the line through
  the two stream lengths, read at 0 tokens);
* **ms per 1-token request** as measured.

Per row the median and the spread (min..max) of the rounds; the figure a row
*adds* to ``none x1`` is the median of the paired differences (same round, the
two rows measured next to each other) with their spread; likewise ``after -
before`` with ``--before``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["order", "paired", "round_figures", "spread", "table"]

FIGURES = ("fixed_ms", "req_ms", "tok_us")
LABELS = {
    "fixed_ms": "fixed CPU ms/request",
    "req_ms": "CPU ms per 1-token request",
    "tok_us": "CPU µs/relayed token",
}


def order(names: Sequence[str], r: int) -> list[str]:
    """Round ``r``'s order: rotated by ``r``, reversed on odd rounds."""
    k = r % len(names)
    out = [*names[k:], *names[:k]]
    return out[::-1] if r % 2 else out


def round_figures(t1: dict[str, Any], t128: dict[str, Any]) -> dict[str, float]:
    """One round of one row: the CPU figures from the two stream lengths."""
    a, b = t1["orch_cpu_ms_per_req"], t128["orch_cpu_ms_per_req"]
    tok_ms = (b - a) / 127
    return {"fixed_ms": a - tok_ms, "req_ms": a, "tok_us": tok_ms * 1000}


def spread(xs: Sequence[float]) -> tuple[float, float, float]:
    """Median, min, max."""
    return statistics.median(xs), min(xs), max(xs)


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """The median and spread of ``a[i] - b[i]`` (the same round's two rows)."""
    return spread([x - y for x, y in zip(a, b, strict=True)])


def _fmt(s: tuple[float, float, float], digits: int, sign: bool = False) -> str:
    f: Callable[[float], str] = (
        (lambda x: f"{x:+.{digits}f}") if sign else (lambda x: f"{x:.{digits}f}")
    )
    return f"{f(s[0])} [{f(s[1])}..{f(s[2])}]"


def table(rounds: dict[str, list[dict[str, float]]], pairs: list[tuple[str, str]]) -> list[str]:
    """Markdown: per row median [min..max] of each figure; then each pair's paired
    differences (``a - b``)."""
    digits = {"fixed_ms": 3, "req_ms": 3, "tok_us": 2, "req_per_s": 0, "tok_per_s": 0}
    cols = [*FIGURES, "req_per_s", "tok_per_s"]
    names = {**LABELS, "req_per_s": "1-token tasks/s", "tok_per_s": "relayed tokens/s (128-token)"}
    lines = [
        "| row | " + " | ".join(names[c] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for row, rs in rounds.items():
        cells = [_fmt(spread([r[c] for r in rs]), digits[c]) for c in cols]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Paired differences (the same round's two rows), median [min..max]:",
        "",
        "| a - b | " + " | ".join(LABELS[c] for c in FIGURES) + " |",
        "|---|" + "---|" * len(FIGURES),
    ]
    for a, b in pairs:
        if a not in rounds or b not in rounds:
            continue
        cells = [
            _fmt(paired([r[c] for r in rounds[a]], [r[c] for r in rounds[b]]), digits[c], True)
            for c in FIGURES
        ]
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return lines
