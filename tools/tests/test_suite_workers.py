"""The suite on two worker processes keeps its end-of-run checks and its fixture sharing
(ORCH-6240, ORCH-6008, ORCH-8008).

Each case runs a small pytest session in a subprocess with the workspace's root
``conftest.py``: once on two xdist workers, as the suite runs, and once without.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import gone

ROOT = Path(__file__).resolve().parents[2]
# Plugin autoload off, the plugins these runs use named (ORCH-6260): the workspace venv's
# autoloaded plugins (schemathesis, langsmith, hypothesis, ...) cost ~9 s of imports per
# process here, paid by the controller and by each worker, and none takes part in what
# these runs prove (scheduling on workers, the end-of-run checks of the root conftest).
_PYTEST = [
    sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
    "-p", "xdist.plugin", "-p", "pytest_asyncio.plugin",
]  # fmt: skip

_TESTS = """
import logging, os, subprocess, sys, time
from pathlib import Path
import pytest

OUT = Path(os.environ["SUITE_WORKERS_OUT"])

@pytest.fixture(autouse=True)
def times(request):
    start = time.time()
    yield
    (OUT / f"times-{request.node.name}").write_text(f"{start} {time.time()}")

@pytest.mark.real_engine  # first in the file, run after the tests without one (ORCH-6264)
def test_real():
    pass

@pytest.mark.alone
def test_alone():
    (OUT / "alone-worker").write_text(os.environ.get("PYTEST_XDIST_WORKER", "main"))

@pytest.fixture(scope="module")
def image_install():
    return os.environ.get("PYTEST_XDIST_WORKER", "main")

@pytest.mark.alone  # a group fixture's batch marked alone: in the alone unit (ORCH-6258)
@pytest.mark.parametrize("i", range(2))
def test_alone_batch(image_install, i):
    (OUT / f"alone-batch-{i}").write_text(image_install)

def test_logs_a_key():
    logging.getLogger("leaky").info("auth with %s", "Bearer llo_" + "A" * 24)

@pytest.mark.xdist_group("slow")
def test_waits_on_its_own_process():
    # still running when the other worker ends and looks for leftovers
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10)"])
    assert proc.wait(timeout=60) == 0  # -9 if the other worker took it for a leftover

@pytest.mark.xdist_group("fast")
def test_leaves_a_process_behind():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                     start_new_session=True)

@pytest.fixture(scope="module")
def standalone_runs():
    return os.environ.get("PYTEST_XDIST_WORKER", "main")

@pytest.mark.parametrize("i", range(4))
def test_batch(standalone_runs, i):
    (OUT / f"batch-{i}").write_text(standalone_runs)

@pytest.mark.skipif(not os.environ.get("SUITE_WORKERS_FAIL"), reason="the early-stop case's")
def test_fails():
    assert False, "stops a -x run"

@pytest.mark.parametrize("i", range(6))
def test_free(i):
    time.sleep(0.2)
"""


# items that share one node id, as schemathesis makes one per API operation
_TWINS = """

class _Twin(pytest.Item):
    def runtest(self):
        (Path(os.environ["SUITE_WORKERS_OUT"]) / f"twin-{self.k}").write_text("ran")

    def reportinfo(self):
        return self.path, 0, self.name


class _Twins(pytest.File):
    def collect(self):
        for k in range(3):
            item = _Twin.from_parent(self, name="twin")
            item.k = k
            yield item


def pytest_collect_file(parent, file_path):
    if file_path.name == "twins.txt":
        return _Twins.from_parent(parent, path=file_path)
"""


# work beside a one-process run (ORCH-6264), as the standalone batch: a thread that starts a
# process in a session of its own and records when it ran; stop() ends that process by PID
_BESIDE = """

import signal, subprocess, sys, threading, time

class _Work:
    def __init__(self, seconds):
        out = Path(os.environ["SUITE_WORKERS_OUT"])
        self.proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"],
                                     start_new_session=True)
        (out / "beside-pid").write_text(str(self.proc.pid))
        self.thread = threading.Thread(target=self._watch, args=(out, time.time()))
        self.thread.start()

    def _watch(self, out, start):
        self.proc.wait()
        (out / "beside-times").write_text(f"{start} {time.time()}")

    def wait(self):
        self.thread.join()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.thread.join()


def pytest_runtestloop(session):
    from llama_orch.testing_engines.workers import run_beside  # a plugin of the lines above

    if not session.config.option.collectonly:
        run_beside(session.config, _Work(float(os.environ["SUITE_WORKERS_BESIDE_S"])))
"""


def _run(
    tmp_path: Path, *args: str, beside: float | None = None, fail: bool = False
) -> tuple[int, str]:
    conftest = (ROOT / "conftest.py").read_text() + "\nimport os\nfrom pathlib import Path\n"
    (tmp_path / "conftest.py").write_text(conftest + _TWINS + (_BESIDE if beside else ""))
    (tmp_path / "twins.txt").write_text("")
    (tmp_path / "test_cases.py").write_text(_TESTS)
    ini = (
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n alone\n real_engine\n"
    )
    (tmp_path / "pytest.ini").write_text(ini)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LLAMA_ORCH_"))}
    env["SUITE_WORKERS_OUT"] = str(tmp_path)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # inherited by the workers too
    env["SUITE_WORKERS_BESIDE_S"] = str(beside)
    if fail:
        env["SUITE_WORKERS_FAIL"] = "1"
    proc = subprocess.run(
        [
            *_PYTEST,
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            "--basetemp",  # ORCH-6257
            str(tmp_path / "pytest-tmp"),
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _end_of_run_failures(out: str, code: str) -> list[str]:
    return re.findall(re.escape(code) + ".*", out)


def test_two_workers_keep_the_end_of_run_checks_and_the_batch_fixture(tmp_path: Path) -> None:
    """ORCH-6240 with ORCH-8008 and ORCH-6008. The tests all pass and the run fails at its
    end: the key logged on one worker fails it; the process one test left fails it, exactly
    once, while the process the other worker's test still waits on is left alone (that test
    passes); the tests of the batch fixture ``standalone_runs`` share one worker; the test
    marked ``alone`` starts after every other test has ended; three items that share one
    node id all run."""
    rc, out = _run(tmp_path, "-n", "2", "--dist", "loadgroup")
    assert "20 passed" in out, out[-3000:]
    assert {f.name for f in tmp_path.glob("twin-*")} == {"twin-0", "twin-1", "twin-2"}, out
    assert rc == 1, out[-3000:]
    keys = _end_of_run_failures(out, "ORCH-8008: a log record holds an API key: leaky:")
    left = _end_of_run_failures(out, "ORCH-6008: process left running by the tests")
    assert len(keys) == 1, out[-3000:]
    assert len(left) == 1 and "time.sleep(60)" in left[0], out[-3000:]
    workers = {(tmp_path / f"batch-{i}").read_text() for i in range(4)}
    assert len(workers) == 1 and workers <= {"gw0", "gw1"}, workers
    times = {f.name[6:]: [float(t) for t in f.read_text().split()] for f in tmp_path.glob("time*")}
    alone = ["test_alone", "test_alone_batch[0]", "test_alone_batch[1]"]
    alone_start = min(times.pop(name)[0] for name in alone)
    assert len(times) == 14 and max(end for _, end in times.values()) <= alone_start, times
    # ORCH-6258: the alone tests, the batch fixture's among them, on the one alone worker
    ran = {(tmp_path / n).read_text() for n in ("alone-worker", "alone-batch-0", "alone-batch-1")}
    assert len(ran) == 1 and ran <= {"gw0", "gw1"}, ran


def test_one_process_keeps_the_end_of_run_checks(tmp_path: Path) -> None:
    rc, out = _run(tmp_path, "-n", "0", "-k", "not waits_on")
    assert "19 passed" in out, out[-3000:]
    assert rc == 1, out[-3000:]
    assert len(_end_of_run_failures(out, "ORCH-8008: a log record holds")) == 1, out[-3000:]
    left = _end_of_run_failures(out, "ORCH-6008: process left running by the tests")
    assert len(left) == 1 and "time.sleep(60)" in left[0], out[-3000:]


def _times(tmp_path: Path) -> dict[str, list[float]]:
    return {f.name[6:]: [float(t) for t in f.read_text().split()] for f in tmp_path.glob("times-*")}


def test_one_process_runs_the_work_beside_the_tests_then_the_real_and_alone_tests(
    tmp_path: Path,
) -> None:
    """ORCH-6264. In one process the work registered beside the run (the standalone batch's
    way) starts before the tests and runs while the tests without a real engine do; the
    real-engine test, then the tests marked ``alone``, each first in the file, run after every
    test without one and start only once that work has ended."""
    rc, out = _run(tmp_path, "-n", "0", "-k", "not waits_on", beside=3.0)
    assert "19 passed" in out and rc == 1, out[-3000:]  # rc: the end-of-run checks, as above
    times = _times(tmp_path)
    assert len(times) == 16, sorted(times)
    alone = [times.pop(n) for n in ("test_alone", "test_alone_batch[0]", "test_alone_batch[1]")]
    real_start, real_end = times.pop("test_real")
    beside_start, beside_end = (float(t) for t in (tmp_path / "beside-times").read_text().split())
    first_end = min(end for _, end in times.values())
    last_end = max(end for _, end in times.values())
    assert beside_start < first_end < beside_end, (beside_start, first_end, beside_end)
    assert max(last_end, beside_end) <= real_start, out[-3000:]
    assert real_end <= min(start for start, _ in alone), out[-3000:]


def test_one_process_stops_the_work_beside_a_run_that_stops_early(tmp_path: Path) -> None:
    """ORCH-6264. A run that ends early (here ``-x`` on a failure) stops the work beside it
    before its end-of-run checks: its process is gone and is not reported as left behind."""
    rc, out = _run(tmp_path, "-n", "0", "-x", "-k", "fails or free", beside=60.0, fail=True)
    assert rc == 1 and "1 failed" in out and "passed" not in out, out[-3000:]
    pid = int((tmp_path / "beside-pid").read_text())
    assert gone(pid), f"the work's process {pid} still runs"
    assert not _end_of_run_failures(out, "ORCH-6008: process left running"), out[-3000:]
