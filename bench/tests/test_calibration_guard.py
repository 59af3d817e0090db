"""ORCH-2931..2936: the held tasks of a run, read offline (no processes run).

uv run pytest bench/tests -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibration_guard import NOT_KEPT, OTHER, OVER, UNDER, figures, holds, misses


def test_the_holds_come_from_the_guards_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "orchestratord.log"
    lines = [
        {"msg": "dispatch guard: task aaa held (bench-e0: 3518 ms to the guarding tasks' end)"},
        {"msg": "forecast: task aaa position 0 start 0 finish 10"},
        {"msg": "dispatch guard: task aaa dispatched after a hold of 621 ms"},
        {"msg": "dispatch guard: task bbb held (bench-e0: 10 ms to the guarding tasks' end)"},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    held, after = holds(log)
    assert held == {"aaa", "bbb"}
    assert after == {"aaa": 621.0}
    assert holds(tmp_path / "missing.log") == (set(), {})


def test_the_figures_are_orch_1955s() -> None:
    # told / actual 1.0, 0.5, 2.5: errors 0, 50, 150 %; factors 1, 2, 2.5
    out = figures([(100.0, 100.0), (100.0, 200.0), (250.0, 100.0)])
    assert out.startswith("n 3: median 50 %, p90 factor 2.50, within 2x 67 %")
    assert figures([]) == "n 0"


def _out(tid: str, admitted: float, told: float, waited: float) -> dict[str, object]:
    return {"status": 202, "task_id": tid, "admitted_s": admitted,
            "predicted_start_ms": told, "queue_wait_ms": waited}  # fmt: skip


def test_the_start_misses_are_classed_as_orch_2939_says() -> None:
    outs = [
        _out("head", 10.0, 11500.0, 1600.0),  # held, told 7x its hold: over-told
        _out("behind", 10.4, 5100.0, 1200.0),  # follows the held head: over-told
        _out("flip", 20.0, 27900.0, 6300.0),  # not held, told 4x: the hold not kept
        _out("late", 30.0, 13000.0, 26500.0),  # held 2x longer than told: under-told
        _out("slow", 40.0, 1000.0, 2500.0),  # not held, waited 2.5x: other
        _out("ok", 50.0, 1000.0, 1500.0),  # within 2x: no miss
        _out("short", 60.0, 0.0, 90.0),  # waited under 100 ms: not counted
        _out("later", 11.0, 4000.0, 1000.0),  # the head still queued, told to follow it
        _out("alone", 11.5, 30000.0, 1000.0),  # told far past the head's start: its own
        {"status": 400, "task_id": None, "queue_wait_ms": None},
    ]
    got = {o["task_id"]: kind for o, kind in misses(outs, {"head", "late"})}
    assert got == {"head": OVER, "behind": OVER, "flip": NOT_KEPT, "late": UNDER,
                   "slow": OTHER, "later": OVER, "alone": NOT_KEPT}  # fmt: skip
