"""bench/ha_relay_paired.py (ORCH-2620): every row takes every place in the rounds'
order, the figures come from the two stream lengths, and what a row adds is the
median of the same round's differences, not the difference of the medians.

uv run pytest bench/tests -q
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ha_relay_paired  # bench/ha_relay_paired.py


def test_every_row_takes_every_place() -> None:
    names = ["none x1", "memory x1", "valkey x1", "memory x1 (before)", "valkey x1 (before)"]
    for n in (3, 5):
        rows = names[:n]
        rounds = [ha_relay_paired.order(rows, r) for r in range(2 * n)]
        assert all(sorted(o) == sorted(rows) for o in rounds)
        for row in rows:
            assert {o.index(row) for o in rounds} == set(range(n))
        assert rounds[1] != rounds[0][::-1] or n < 3  # rotated and reversed, not just ABBA


def test_round_figures_from_two_stream_lengths() -> None:
    f = ha_relay_paired.round_figures({"orch_cpu_ms_per_req": 3.0}, {"orch_cpu_ms_per_req": 5.54})
    assert abs(f["tok_us"] - 20.0) < 1e-9  # (5.54 - 3.0) / 127 ms
    assert abs(f["fixed_ms"] - 2.98) < 1e-9
    assert f["req_ms"] == 3.0


def test_added_is_the_median_of_paired_differences() -> None:
    # a common drift over the rounds: the medians' difference reads 0, the pairs read +1
    a = [11.0, 21.0, 31.0]
    b = [10.0, 30.0, 20.0]
    med, lo, hi = ha_relay_paired.paired(a, b)
    assert (med, lo, hi) == (1.0, -9.0, 11.0)
    rounds = {
        "none x1": [
            {k: x for k in ("fixed_ms", "req_ms", "tok_us", "req_per_s", "tok_per_s")} for x in b
        ],
        "valkey x1": [
            {k: x for k in ("fixed_ms", "req_ms", "tok_us", "req_per_s", "tok_per_s")} for x in a
        ],
    }
    lines = ha_relay_paired.table(rounds, [("valkey x1", "none x1")])
    assert any(
        line.startswith("| valkey x1 - none x1 | +1.000 [-9.000..+11.000]") for line in lines
    )
