"""ORCH-2931..2936: the held tasks of a run, read offline (no processes run).

uv run pytest bench/tests -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibration_guard import figures, holds


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
