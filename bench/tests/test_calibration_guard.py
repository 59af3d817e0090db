"""ORCH-2931..2936, ORCH-2939, ORCH-2928/2929: the held tasks of a run, read offline (no
processes run).

uv run pytest bench/tests -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibration_guard import (
    NOT_KEPT,
    OTHER,
    OVER,
    RELEASED,
    UNDER,
    figures,
    holds,
    misses,
    released,
)

BENCH = Path(__file__).resolve().parents[1]
RUN_1516 = BENCH / "tests" / "data" / "2026-12-05-1516-guard.jsonl"


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


def _run_1516() -> tuple[list[dict[str, object]], set[str]]:
    data = json.loads((BENCH / "results" / "2026-12-05-1516-calibration.json").read_text())
    held, _after = holds(RUN_1516)
    return data["outcomes"], held


def test_run_1516s_two_over_told_holds_were_released() -> None:
    """ORCH-2929: run 1516's own log lines (its 202s' forecast lines, the guard's INFO
    lines, the task ends: ``data/2026-12-05-1516-guard.jsonl``). fcb51686 was told held
    18,492 ms by 3739de25 and dispatched after a hold of 77 ms; 4a7bd776 told 13,635 ms by
    the same task, dispatched after 3,951 ms; 3739de25 ended 17.6 s / 11.2 s after those
    dispatches. ORCH-2939's classifier (no ``released``) calls both over-told."""
    outs, held = _run_1516()
    gone = released(RUN_1516)
    assert gone == {
        "fcb51686-6274-4cb9-bc9c-7be445ea85cf",
        "4a7bd776-1e50-42da-9c8e-23ab94819136",
    }
    got = {str(o["task_id"])[:8]: kind for o, kind in misses(outs, held, gone)}
    assert got["fcb51686"] == RELEASED
    assert got["4a7bd776"] == RELEASED
    assert OVER not in got.values()
    before = {str(o["task_id"])[:8]: kind for o, kind in misses(outs, held)}
    assert before["fcb51686"] == before["4a7bd776"] == OVER  # without the DEBUG lines


def _line(ts: float, msg: str, **kw: str) -> str:
    return json.dumps({"ts": ts, "msg": msg, **kw})


def _forecast(tid: str, start: int, running: list[tuple[str, int]]) -> str:
    rows = [(r, 10, True, (1.0, 0.9), ms) for r, ms in running]
    return (
        f"forecast: task {tid} position 0 start {start} finish {start + 900}; ahead [];"
        f" (pace, prefill ms) [(1.0, 0)]; running (task, tokens left, decoding, ratio,"
        f" weight, ms left) [{rows!r}]"
    )


def test_a_hold_ended_by_its_told_guards_end_stays_over_told(tmp_path: Path) -> None:
    """ORCH-2928: the guard the start was told from (ms left = the start told, within
    1 ms) ended at the dispatch: over-told; still running 100 ms after it: released."""
    log = tmp_path / "orchestratord.log"
    lines = [
        _line(100.0, _forecast("aaaaaaaa", 6001, [("dddddddd", 6000), ("ffffffff", 900)])),
        _line(100.5, _forecast("bbbbbbbb", 4000, [("eeeeeeee", 3999), ("dddddddd", 5500)])),
        _line(101.0, "dispatch guard: task aaaaaaaa-1 held (bench-e0: 2000 ms to the end)"),
        _line(103.0, "task ended", job_id="dddddddd-1"),
        _line(103.05, "dispatch guard: task aaaaaaaa-1 dispatched after a hold of 2050 ms"),
        _line(103.1, "dispatch guard: task bbbbbbbb-1 held (bench-e0: 900 ms to the end)"),
        _line(103.2, "dispatch guard: task bbbbbbbb-1 dispatched after a hold of 100 ms"),
        _line(103.29, "task ended", job_id="eeeeeeee-1"),
    ]
    log.write_text("\n".join(lines) + "\n")
    assert released(log) == set()  # aaaa's guard ended before; eeee 90 ms after bbbb's
    lines[-1] = _line(103.31, "task ended", job_id="eeeeeeee-1")
    log.write_text("\n".join(lines) + "\n")
    assert released(log) == {"bbbbbbbb-1"}
    outs = [
        _out("aaaaaaaa-1", 100.0, 6001.0, 2050.0),
        _out("bbbbbbbb-1", 100.5, 4000.0, 2100.0),  # within 2x: no miss
        _out("cccccccc-1", 100.6, 3500.0, 1200.0),  # follows bbbb: released with it
    ]
    got = {o["task_id"]: kind for o, kind in misses(outs, {"aaaaaaaa-1", "bbbbbbbb-1"},
                                                    released(log))}  # fmt: skip
    assert got == {"aaaaaaaa-1": OVER, "cccccccc-1": RELEASED}
    assert released(tmp_path / "missing.log") == set()
