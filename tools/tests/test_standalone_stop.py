"""The standalone batch's processes end when the batch is stopped (ORCH-6265)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import _load, gone

standalone = _load("standalone")

# a run that starts a process in a session of its own (as a test's daemon may), then waits
_PARENT = """
import subprocess, sys, time
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         start_new_session=True)
Path(sys.argv[1]).write_text(f"{child.pid}")
time.sleep(120)
"""


def test_stop_ends_every_process_of_the_runs_and_refuses_later_steps(tmp_path: Path) -> None:
    """ORCH-6265: ``Runs.stop`` ends a running step's process group and what it started in a
    session of its own (found by the batch's tag, by PID), the step returns, and a later step
    is refused."""
    runs = standalone.Runs()
    pids = tmp_path / "child"
    done: list[object] = []

    def step() -> None:
        try:
            done.append(runs.run([sys.executable, "-c", _PARENT, str(pids)], tmp_path, 300))
        except Exception as exc:  # the stop may come as a killed process or a refusal
            done.append(exc)

    thread = threading.Thread(target=step)
    thread.start()
    deadline = time.monotonic() + 30
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pids.read_text())
    (parent,) = [p.pid for p in runs._procs]
    runs.stop()
    thread.join(timeout=30)
    assert not thread.is_alive() and len(done) == 1
    assert gone(parent) and gone(child), (parent, child)
    with pytest.raises(standalone.Stopped):
        runs.run([sys.executable, "-c", "pass"], tmp_path, 10)
