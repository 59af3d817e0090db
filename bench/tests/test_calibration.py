"""ORCH-2919/2920: the calibration bench's start splits and held start (no processes run).

uv run pytest bench/tests -q
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibration import Outcome, analyse, held_start_pairs, overtaken


def _task(admitted_s: float, wait_ms: float, told_ms: float, deadline: bool = False) -> Outcome:
    spec = {"prompt_numbers": 10, "max_tokens": 4, "cancel_after": None}
    spec["deadline_ms"] = 60_000 if deadline else None
    return Outcome(
        spec=spec,
        concurrency=8,
        status=202,
        admitted_s=admitted_s,
        queue_wait_ms=wait_ms,
        predicted_start_ms=int(told_ms),
        start_told=[(0.0, told_ms)],
    )


def test_a_task_passed_by_a_later_one_is_overtaken() -> None:
    # ORCH-2919: told 3.5 s, waited 14 s because a deadline task admitted 2.5 s later
    # started before it (EDF); the deadline task itself and a task that started
    # before a later one are not overtaken
    fifo = _task(216.1, 13_800, 3_546)
    edf = _task(218.6, 1_200, 1_520, deadline=True)
    early = _task(210.0, 500, 450)
    outs = [fifo, edf, early]
    assert overtaken(fifo, outs)
    assert not overtaken(edf, outs)
    assert not overtaken(early, outs)
    s = analyse(outs)
    assert s["start"]["n"] == 3
    assert s["start_overtaken"]["n"] == 1
    assert s["start_in_order"]["n"] == 2
    assert s["start_overtaken"]["p90_factor"] > 3.8
    assert s["start_in_order"]["p90_factor"] < 1.3


def test_held_start_follows_the_queued_events() -> None:
    # ORCH-2920: the 202 told 3.5 s; a ``queued`` event at 5 s told 8.8 s more
    o = _task(216.1, 13_800, 3_546)
    assert o.start_told is not None
    o.start_told.append((5_000.0, 13_800.0))
    pairs = held_start_pairs(o)
    assert len(pairs) == 10
    assert pairs[0] == (3_546.0, 13_800.0)
    assert pairs[2] == (3_546.0 - 2_760, 13_800 - 2_760)
    assert pairs[3] == (1.0, 13_800 - 4_140)  # the 202's start passed: 1 ms left
    for told, left in pairs[4:]:  # from 5.52 s on, the moved start is the actual one
        assert abs(told - left) < 1e-6
    assert analyse([o])["start_held"]["n"] == 10
