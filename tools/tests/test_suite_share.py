"""The first part's share in a second process, told in the first (ORCH-6270).

Each case runs a small pytest session in a subprocess with the workspace's root ``conftest.py``
(its plugins: the part order, the share, the end-of-run checks) and a conftest that does what
``tools/tests/conftest.py`` does with the standalone batch: work beside the run that, after a
while, runs the share with ``share.run`` while this process tells its reports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the batch's way (tools/tests/conftest.py, tools/standalone.py): the share runs in the
# background after the work before it (here a sleep), its processes in a group of their own
_BESIDE = """
import os, signal, subprocess, threading, time
from pathlib import Path

OUT = Path(os.environ["SHARE_OUT"])


def pytest_sessionstart(session):
    from llama_orch.testing_engines import share  # a plugin of the lines above: imported after

    share.SHARE = ("test_shared.py",)


class _Work:
    def __init__(self, scratch):
        self.scratch, self.procs = scratch, []
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _start(self, cmd, cwd, out, env):
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def _run(self):
        from llama_orch.testing_engines import share

        time.sleep(1.0)  # the batch's runs
        (OUT / "share-start").write_text(str(time.time()))
        share.run(self._start, OUT, self.scratch, dict(os.environ))
        (OUT / "share-end").write_text(str(time.time()))

    def ended(self):
        return not self.thread.is_alive()

    def wait(self):
        self.thread.join()

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        self.thread.join()


def pytest_runtestloop(session):
    from llama_orch.testing_engines import share
    from llama_orch.testing_engines.workers import run_beside

    if session.config.option.collectonly or os.environ.get(share.REPORTS_ENV):
        return  # the share's own run starts no share
    scratch = OUT / "scratch"
    scratch.mkdir()
    shared = share.prepare(scratch, session.items)
    work = _Work(scratch)
    run_beside(session.config, work)
    result = lambda: share.read_result(scratch)
    share.start_replay(session.config, share.Replay(session.config, shared, scratch, work.ended,
                                                    result))
"""

_STAYS = """
import os, time
from pathlib import Path
import pytest

OUT = Path(os.environ["SHARE_OUT"])

def _mark(name, start):
    (OUT / f"ran-{name}").write_text(f"{os.getpid()} {start} {time.time()}")

def test_here():
    start = time.time()
    time.sleep(2.0)  # runs while the share runs
    _mark("test_here", start)

@pytest.mark.real_engine
def test_here_real():
    _mark("test_here_real", time.time())
"""

_SHARED = """
import os, subprocess, sys, time
from pathlib import Path
import pytest

OUT = Path(os.environ["SHARE_OUT"])

def _mark(name, start):
    (OUT / f"ran-{name}").write_text(f"{os.getpid()} {start} {time.time()}")

@pytest.mark.alone  # stays in the outer process, after the share (ORCH-6264)
def test_shared_alone():
    _mark("test_shared_alone", time.time())

@pytest.mark.real_engine  # stays too
def test_shared_real():
    _mark("test_shared_real", time.time())

def test_shared_sleeps():
    start = time.time()
    time.sleep(0.6)
    _mark("test_shared_sleeps", start)

@pytest.mark.parametrize("i", range(3))
def test_shared_each(i):
    _mark(f"test_shared_each{i}", time.time())

def test_shared_fails():
    _mark("test_shared_fails", time.time())
    assert not os.environ.get("SHARE_FAIL"), "the share's own failure, told in the outer run"

def test_shared_crashes():
    if os.environ.get("SHARE_CRASH"):
        os._exit(3)  # its reports and those of the tests after it are never written

def test_shared_leaves_a_process():
    if os.environ.get("SHARE_LEAK"):  # the share's end-of-run check (ORCH-6008) fails its run
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         start_new_session=True)

def test_shared_last():
    _mark("test_shared_last", time.time())
"""


def _run(tmp_path: Path, **env_flags: str) -> tuple[int, str]:
    conftest = (ROOT / "conftest.py").read_text()
    (tmp_path / "conftest.py").write_text(conftest + _BESIDE)
    (tmp_path / "test_stays.py").write_text(_STAYS)  # collected after test_shared.py
    (tmp_path / "test_shared.py").write_text(_SHARED)
    ini = tmp_path / "pytest.ini"
    ini.write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n alone\n real_engine\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LLAMA_ORCH_"))}
    env["SHARE_OUT"] = str(tmp_path)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # ORCH-6260; the share's run inherits it
    # the share's run (share.share_command) takes the same settings through the environment
    env["PYTEST_ADDOPTS"] = f"-p pytest_asyncio.plugin -c {ini} --rootdir {tmp_path}"
    env.update(env_flags)
    cmd = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--durations=0",
        "--basetemp", str(tmp_path / "pytest-tmp"),  # ORCH-6257
    ]  # fmt: skip
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _ran(tmp_path: Path) -> dict[str, tuple[int, float, float]]:
    out = {}
    for f in tmp_path.glob("ran-*"):
        pid, start, end = f.read_text().split()
        out[f.name[4:]] = (int(pid), float(start), float(end))
    return out


def test_the_share_runs_in_the_second_process_and_is_told_at_its_place(tmp_path: Path) -> None:
    """ORCH-6270. The shared file's tests without a real engine and not ``alone`` run in the
    second process, while this process runs its own; each is told here, passed, at the end of
    the first part, with the other run's durations; the shared file's real-engine and ``alone``
    tests, and this file's, run here, after the share's run has ended."""
    rc, out = _run(tmp_path)
    assert rc == 0 and re.search(r"\b12 passed in", out), out[-4000:]
    ran = _ran(tmp_path)
    here = {ran[n][0] for n in ("test_here", "test_here_real", "test_shared_real")}
    here.add(ran["test_shared_alone"][0])
    shared = {v[0] for n, v in ran.items() if n.startswith("test_shared_") and "_real" not in n}
    shared.discard(ran["test_shared_alone"][0])
    assert len(here) == 1 and len(shared) == 1 and here != shared, ran
    share_start = float((tmp_path / "share-start").read_text())
    share_end = float((tmp_path / "share-end").read_text())
    assert ran["test_here"][1] < share_start < ran["test_here"][2], ran  # beside each other
    assert ran["test_here_real"][1] >= share_end and ran["test_shared_real"][1] >= share_end
    told = re.findall(r"^(test_\w+\.py::\w+(?:\[\d\])?) PASSED", out, re.M)
    expected = [f"test_shared.py::test_shared_each[{i}]" for i in range(3)]
    order = ["test_stays.py::test_here", "test_shared.py::test_shared_sleeps", *expected]
    assert told[: len(order)] == order, told  # the shared last in the first part, in order
    assert told[-3:] == [
        "test_shared.py::test_shared_real",
        "test_stays.py::test_here_real",
        "test_shared.py::test_shared_alone",
    ], told
    sleeps = re.search(r"^([\d.]+)s call +test_shared\.py::test_shared_sleeps$", out, re.M)
    assert sleeps and 0.6 <= float(sleeps.group(1)) < 5, out[-4000:]


def test_a_failure_and_a_failed_end_in_the_share_fail_the_outer_run(tmp_path: Path) -> None:
    """ORCH-6270. A shared test's failure is told here with the other run's text; a failure of
    the share's end-of-run checks (a process left behind, ORCH-6008) fails the outer run."""
    rc, out = _run(tmp_path, SHARE_FAIL="1", SHARE_LEAK="1")
    assert rc == 1 and re.search(r"\b1 failed, 11 passed in", out), out[-4000:]
    assert "the share's own failure, told in the outer run" in out, out[-4000:]
    assert "FAILED test_shared.py::test_shared_fails" in out, out[-4000:]
    assert re.search(r"ORCH-6270: the share's run exited 1", out), out[-4000:]
    assert "ORCH-6008: process left running by the tests" in out, out[-4000:]


def test_a_test_the_share_never_reported_fails_here(tmp_path: Path) -> None:
    """ORCH-6270. A share's run that ends early (it crashed) leaves tests unreported: each
    fails here in the first phase it did not report, naming the cause (the test that crashed in
    its call, the two after it in their setup); the tests before it were told as they ran."""
    rc, out = _run(tmp_path, SHARE_CRASH="1")
    assert rc == 1 and re.search(r"\b1 failed, 9 passed, 2 errors in", out), out[-4000:]
    unreported = re.findall(r"^(FAILED|ERROR) (test_shared\.py::\w+)", out, re.M)
    assert unreported == [
        ("FAILED", "test_shared.py::test_shared_crashes"),
        ("ERROR", "test_shared.py::test_shared_leaves_a_process"),
        ("ERROR", "test_shared.py::test_shared_last"),
    ], out[-4000:]
    assert "ended without reporting this test's call" in out, out[-4000:]
    assert "ended without reporting this test's setup" in out, out[-4000:]
    assert "the share's run exited 3" in out, out[-4000:]
