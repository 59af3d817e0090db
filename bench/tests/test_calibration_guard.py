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
    told_guards,
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


def _run(stamp: str) -> tuple[list[dict[str, object]], set[str], dict[str, bool]]:
    """A run's committed report and its log lines kept in ``data/<stamp>-guard.jsonl``
    (the 202s' forecast lines, the guard's INFO lines, the task ends that decide)."""
    data = json.loads((BENCH / "results" / f"{stamp}-calibration.json").read_text())
    log = BENCH / "tests" / "data" / f"{stamp}-guard.jsonl"
    held, _after = holds(log)
    return data["outcomes"], held, told_guards(log, data["outcomes"])


def test_run_1516s_two_over_told_holds_were_released() -> None:
    """ORCH-2929: fcb51686 was told held 18,492 ms by 3739de25 and dispatched after a
    hold of 77 ms; 4a7bd776 told 13,635 ms by the same task, dispatched after 3,951 ms;
    3739de25 ended 17.6 s / 11.2 s after those dispatches. ORCH-2939's classifier (no
    ``released``) calls both over-told."""
    outs, held, gone = _run("2026-12-05-1516")
    assert gone["fcb51686-6274-4cb9-bc9c-7be445ea85cf"] is True  # 3739de25 ran on
    assert gone["4a7bd776-1e50-42da-9c8e-23ab94819136"] is True
    got = {str(o["task_id"])[:8]: kind for o, kind in misses(outs, held, gone)}
    assert got["fcb51686"] == RELEASED
    assert got["4a7bd776"] == RELEASED
    assert OVER not in got.values()
    before = {str(o["task_id"])[:8]: kind for o, kind in misses(outs, held)}
    assert before["fcb51686"] == before["4a7bd776"] == OVER  # without the DEBUG lines


def test_run_1725s_queue_behind_a_released_hold_was_released() -> None:
    """ORCH-2929: 6825adea, told in its 202 to start at 1,423 ms, was held 2 ms later by
    942c4098 and dispatched after 1,036 ms; 15a9559c and 2e71d841, queued behind it while
    it was held, were told 4,091 / 3,991 ms, 942c4098's forecast end, and started after
    933 / 834 ms, 1.9 s before 942c4098 ended. ORCH-2939 calls them not kept (the held
    task's own 202 told no hold); f1ee3fce, admitted after the hold ended, stays so."""
    outs, held, gone = _run("2026-12-05-1725")
    got = {str(o["task_id"])[:8]: kind for o, kind in misses(outs, held, gone)}
    assert got["15a9559c"] == got["2e71d841"] == RELEASED
    assert got["f1ee3fce"] == NOT_KEPT
    before = {str(o["task_id"])[:8]: kind for o, kind in misses(outs, held)}
    assert before["15a9559c"] == before["2e71d841"] == NOT_KEPT


def test_run_1742s_queue_behind_a_hold_whose_guard_was_canceled_is_over_told() -> None:
    """ORCH-2928: the same phase of seed 19 in run 1742: 017abdbd told 1,034 ms (no hold),
    held 2 ms later by a686e164 (a prefill, 99 tokens left) and dispatched after 1,085 ms
    when a686e164 was canceled; 09e0b64a and dfe027be behind it were told 3,298 / 3,198 ms,
    a686e164's forecast end, and started at its end: over-told (their told guard ended
    sooner than forecast), not "not kept" as ORCH-2939 alone says."""
    outs, held, guards = _run("2026-12-05-1742")
    got = {str(o["task_id"])[:8]: kind for o, kind in misses(outs, held, guards)}
    assert got["09e0b64a"] == got["dfe027be"] == OVER
    before = {str(o["task_id"])[:8]: kind for o, kind in misses(outs, held)}
    assert before["09e0b64a"] == before["dfe027be"] == NOT_KEPT


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
    1 ms) ended by the dispatch (the 202's instant + the queue wait): over-told; still
    running 100 ms after it: released, and so is a task queued behind it told from it."""
    log = tmp_path / "orchestratord.log"
    lines = [
        _line(100.0, _forecast("aaaaaaaa", 6001, [("dddddddd", 6000), ("ffffffff", 900)])),
        _line(100.5, _forecast("bbbbbbbb", 4000, [("eeeeeeee", 3999), ("dddddddd", 5500)])),
        _line(100.6, _forecast("cccccccc", 3500, [("eeeeeeee", 3501), ("bbbbbbbb", 0)])),
        _line(101.0, "dispatch guard: task aaaaaaaa-1 held (bench-e0: 2000 ms to the end)"),
        _line(102.05, "task ended", job_id="dddddddd-1"),
        _line(102.1, "dispatch guard: task bbbbbbbb-1 held (bench-e0: 900 ms to the end)"),
        _line(102.9, "task ended", job_id="eeeeeeee-1"),
    ]
    outs = [
        _out("aaaaaaaa-1", 100.0, 6001.0, 2050.0),  # dddd ended at its dispatch
        _out("bbbbbbbb-1", 100.5, 4000.0, 2100.0),  # within 2x: no miss, released or not
        _out("cccccccc-1", 100.6, 3500.0, 1200.0),  # behind bbbb, eeee ran 1.1 s after
    ]
    log.write_text("\n".join(lines) + "\n")
    assert released(log, outs) == {"bbbbbbbb-1", "cccccccc-1"}  # eeee ran 0.3 / 1.1 s past
    guards = told_guards(log, outs)
    assert guards == {"aaaaaaaa-1": False, "bbbbbbbb-1": True, "cccccccc-1": True}
    got = {o["task_id"]: kind for o, kind in misses(outs, {"aaaaaaaa-1", "bbbbbbbb-1"}, guards)}
    assert got == {"aaaaaaaa-1": OVER, "cccccccc-1": RELEASED}
    lines[-1] = _line(101.85, "task ended", job_id="eeeeeeee-1")  # 50 ms after cccc's
    log.write_text("\n".join(lines) + "\n")
    assert released(log, outs) == set()
    assert released(tmp_path / "missing.log", outs) == set()
