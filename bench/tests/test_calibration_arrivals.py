"""ORCH-2930: the offline evaluation of an expected-arrival term (no processes run).

uv run pytest bench/tests -q
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibration_arrivals import band, figures, prefill_load, stretch
from calibration_held import covered, union


def test_the_prefill_load_decays_without_arrivals() -> None:
    # 1,000 prompt tokens admitted at 0 s at 10 ms a token, time constant 30 s:
    # 10 s of prefill spread over 30 s, then e^{-dt/30} of it
    arrivals = [(0.0, 1_000)]
    assert math.isclose(prefill_load(arrivals, 1e-9, 30.0, 10.0), 1 / 3, rel_tol=1e-6)
    assert math.isclose(prefill_load(arrivals, 30.0, 30.0, 10.0), math.exp(-1) / 3)
    # an arrival at or after the admission is not known to it
    assert prefill_load([(5.0, 1_000)], 5.0, 30.0, 10.0) == 0.0
    # ten time constants on, the told finish is unchanged to 0.01 %
    rho = prefill_load(arrivals, 300.0, 30.0, 10.0)
    assert abs(stretch(2_000.0, 500.0, rho, 0.5) - 2_000.0) < 0.2


def test_the_stretch_is_bounded_and_leaves_the_start() -> None:
    assert stretch(3_000.0, 1_000.0, 0.0, 0.5) == 3_000.0
    assert stretch(3_000.0, 1_000.0, 0.25, 0.5) == 1_000.0 + 2_000.0 / 0.75
    # rho 0.95, bound 0.5: the task's own service doubled at most
    assert stretch(3_000.0, 1_000.0, 0.95, 0.5) == 5_000.0


def test_the_band_says_when_no_uniform_scaling_meets_the_p90() -> None:
    # half told at 1x, half at 0.1x: a 10x band, and scaling every forecast by any
    # factor leaves a p90 factor above 2
    ratios = [1.0] * 10 + [0.1] * 10
    assert math.isclose(band(ratios), 10.0)
    for c in (1.0, 2.0, 3.16, 5.0, 10.0):
        assert figures([c * r for r in ratios])[1] > 2.0
    # nine in ten at 1x: the tenth is outside the band
    assert band([1.0] * 9 + [0.1]) == 1.0


def test_covered_counts_overlaps_once() -> None:
    spans = [(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]
    assert covered(union(spans), 0.5, 5.5) == 3.0  # 0.5-3.0 and 5.0-5.5
    assert covered(union(spans), 3.0, 5.0) == 0.0
