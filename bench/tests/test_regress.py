"""ORCH-2702: the bench's fall-back check against a baseline result (no processes run).

uv run pytest bench/tests -q
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from regress import compare, markdown


def _run(cpu_s: float, rps: float, errors: int, kb: int) -> dict:
    level = {"ok": 100, "tokens": 3200, "cpu_s": {"orch": cpu_s}, "req_per_s": rps}
    return {
        "machine": {},
        "fake": [
            {
                "delay_ms": 0.0,
                "c": 16,
                "direct": {"req_per_s": 1000.0},
                "orch": {**level, "errors": errors},
            }
        ],
        "memory": {
            "hold": {
                "streams": 100,
                "rss_before_kb": {"orch": 50_000},
                "rss_during_kb": {"orch": 50_000 + 100 * kb},
            }
        },
    }


def test_figures_worse_by_more_than_a_quarter_fall_back() -> None:
    base = _run(cpu_s=0.2, rps=200.0, errors=0, kb=40)
    same = compare(base, copy.deepcopy(base))
    assert same and not any(r["worse"] for r in same)
    slightly = compare(base, _run(cpu_s=0.24, rps=170.0, errors=0, kb=48))  # 20 %, 15 %
    assert not any(r["worse"] for r in slightly)
    worse = {r["figure"] for r in compare(base, _run(0.3, 140.0, 3, 60)) if r["worse"]}
    assert worse == {
        "0ms c=16 orch CPU ms/req",
        "0ms c=16 orch CPU µs/token",
        "0ms c=16 orch req/s vs direct",
        "0ms c=16 orch errors",
        "KB per open stream",
    }
    table = "\n".join(markdown(compare(base, _run(0.3, 200.0, 0, 40)), "base.json"))
    assert "**FELL BACK**" in table and "base.json" in table


def test_wrk_relayed_share_of_direct_falls_back() -> None:
    """Issue #20: the native load generator's relayed/direct req/s is a directed figure."""

    def native(relayed: float) -> dict:
        return {
            "machine": {},
            "native": [
                {"c": 64, "direct": {"req_per_s": 1000.0}, "orch_stream": {"req_per_s": relayed}}
            ],
        }

    rows = {r["figure"]: r for r in compare(native(400.0), native(280.0))}
    assert rows["wrk c=64 req/s vs direct"]["worse"]
    rows = {r["figure"]: r for r in compare(native(400.0), native(380.0))}
    assert not rows["wrk c=64 req/s vs direct"]["worse"]


def test_memory_figures_are_the_median_slope_between_batches() -> None:
    """ORCH-2761: with batches, KB per queued task / open stream is the median of the
    RSS slopes between batches (the first batch only warms); older results keep their
    one-peak figure, so a baseline from before still compares."""
    from regress import figures, memory_slope

    admit = {
        "ok": 4000,
        "errors": 0,
        "cpu_s": {"orch": 8.0},
        "rss_start_kb": {"orch": 50_000},
        "rss_peak_kb": {"orch": 90_000},
        # slopes 2.0, 9.0 (a burst), 1.5 KB per task
        "rss_steps_kb": [{"orch": 52_000}, {"orch": 54_000}, {"orch": 63_000}, {"orch": 64_500}],
        "ok_steps": [1000, 2000, 3000, 4000],
    }
    hold = {
        "streams": 300,
        "rss_before_kb": {"orch": 40_000},
        "rss_during_kb": {"orch": 49_000},
        "rss_steps_kb": [{"orch": 43_000}, {"orch": 46_000}, {"orch": 49_000}],
        "streams_steps": [100, 200, 300],
    }
    assert memory_slope(admit) == (2.0, [1.5, 2.0, 9.0])
    assert memory_slope(hold) == (30.0, [30.0, 30.0])
    figs = figures({"memory": {"admit": admit, "hold": hold}})
    assert figs["KB per queued task"] == (2.0, "lower")
    assert figs["KB per open stream"] == (30.0, "lower")
    old = {k: v for k, v in admit.items() if k not in ("rss_steps_kb", "ok_steps")}
    assert memory_slope(old) == (10.0, [])  # (90000 - 50000) / 4000
