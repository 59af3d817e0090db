"""A share of a one-process run's first part in a second workspace process (ORCH-6270).

In one process (ORCH-6264) the tests that need no real engine run first, with the standalone
batch beside them in a process of its own; the batch ends long before them, and the second
core then idles for the rest of that part. So, once the batch's runs have ended, its process
runs a share of those tests: the ones under ``SHARE`` (whole test files; their tests that need
no real engine and are not ``alone``), in one pytest run of the workspace venv (``run_share``),
which writes every report of every test (setup, call, teardown) to a file as it is made
(``LLAMA_ORCH_SHARE_REPORTS``). This process orders the share's tests last in the first part
(``is_shared``) and, at each of them, reports what that run reported for it, at its place, in
its order, waiting for it outside the test's timeout: the outcomes, the durations and the
failure's text are the other run's (``Replay``). A test the other run did not report (it
crashed, hung or was stopped) fails here with the run's output; a non-zero exit of that run
(its end-of-run checks, ORCH-6008 and ORCH-8008, run there for its own tests) fails the run here.

Each share test runs once, as before, in the same venv, with the same fixtures and bounds; on
two workers (ORCH-6240) any test that is not ``alone`` may already run beside any other.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Literal

import pytest

__all__ = [
    "REPORTS_ENV",
    "SHARE",
    "Replay",
    "is_shared",
    "prepare",
    "read_result",
    "run",
    "select",
    "share_command",
    "start_replay",
]

# Test files (paths from the repository root, a directory ending in "/") whose tests without a
# real engine and without the ``alone`` mark run in the second process. Chosen by their time
# in session 25's measured run (ORCH-6270): about half of what the first part has left once the
# batch has ended. Not here: files that share a session fixture with tests that stay in this
# process (``image_install``: test_release, test_deploy; the pact consumer and provider, one
# ordered group), and the self-tests that start pytest runs of the suite's own machinery.
SHARE: tuple[str, ...] = (
    "packages/adapter-http/tests/",
    "packages/core/tests/",
    "packages/state-valkey/tests/",
)

REPORTS_ENV = "LLAMA_ORCH_SHARE_REPORTS"  # set in the second process: where its reports go
_REAL_ENGINE, _ALONE = "real_engine", "alone"


def _rel(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def is_shared(item: pytest.Item) -> bool:
    """In ``SHARE`` and in the first part (no real engine, not ``alone``)."""
    if item.get_closest_marker(_ALONE) or item.get_closest_marker(_REAL_ENGINE):
        return False
    path = _rel(item)
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in SHARE)


def select(items: list[pytest.Item]) -> list[str]:
    """The node ids the second process runs, in this process's order: the shared items whose
    node id is the only one of its kind (items that share a node id, as schemathesis makes
    them, stay here: a report could not tell them apart)."""
    count = Counter(item.nodeid for item in items)
    return [item.nodeid for item in items if is_shared(item) and count[item.nodeid] == 1]


# in the scratch directory of the standalone batch, whose process runs the share
ARGS, REPORTS, LOG, RESULT = "share-args.txt", "share-reports.jsonl", "share.log", "share.json"
_SESSION_TAG = "LLAMA_ORCH_TEST_SESSION"  # llamacpp's: the run's own processes (ORCH-6008)


def prepare(scratch: Path, items: list[pytest.Item]) -> list[str]:
    """The share's node ids (``select``), written for its run (nothing when there are none)."""
    nodeids = select(items)
    if nodeids:
        (scratch / ARGS).write_text("".join(f"{n}\n" for n in nodeids))
    return nodeids


def share_command(python: str, scratch: Path) -> list[str]:
    """The second process's pytest run: the workspace's settings, the selected node ids."""
    return [
        python,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",  # this process writes the cache; two writers would race
        # its own temp root (ORCH-6257)
        "--basetemp",
        str(scratch / "share-tmp"),
        f"@{scratch / ARGS}",
    ]


def run(start: Callable[..., Any], root: Path, scratch: Path, env: dict[str, str]) -> int:
    """Runs the share (in the standalone batch's process, once its runs have ended) with
    ``start`` (``Runs.start``: a process group of its own, the batch's tag); records its exit.
    The run gets a session tag of its own: its end-of-run check looks for its own processes
    only, and the outer run's for the outer run's (ORCH-6008)."""
    env = {k: v for k, v in env.items() if k != _SESSION_TAG}
    env[REPORTS_ENV] = str(scratch / REPORTS)
    with (scratch / LOG).open("w") as log:
        proc = start(share_command(sys.executable, scratch), root, log, env)
    code = int(proc.wait())
    (scratch / RESULT).write_text(json.dumps({"returncode": code}))
    return code


def read_result(scratch: Path) -> tuple[int | None, str]:
    """The share's exit (None: no record) and the end of its output."""
    path, log = scratch / RESULT, scratch / LOG
    code = json.loads(path.read_text())["returncode"] if path.is_file() else None
    return code, log.read_text(errors="replace")[-8000:] if log.is_file() else "(no output)"


class _Writer:
    """In the second process: each report, serialised as pytest-xdist sends its workers'."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self._config, self._path = config, path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self._config.hook.pytest_report_to_serializable(config=self._config, report=report)
        # opened per report: the tests that count their process's descriptors see none of it
        with self._path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(data) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    path = os.environ.get(REPORTS_ENV)
    if path:
        config.pluginmanager.register(_Writer(config, Path(path)), "llama-orch-share-writer")


class Replay:
    """In this process: the second process's reports, read as they come, told at each shared
    test's place. ``ended`` says the second process has ended (its last reports are then in the
    file); ``result`` is its exit (None: none recorded) and its output's end."""

    def __init__(
        self,
        config: pytest.Config,
        nodeids: list[str],
        scratch: Path,
        ended: Callable[[], bool],
        result: Callable[[], tuple[int | None, str]],
    ) -> None:
        self._config = config
        self.nodeids = set(nodeids)
        self._path, self._ended, self._result = scratch / REPORTS, ended, result
        self._offset = 0
        self._got: dict[str, list[pytest.TestReport]] = {}
        self.told = 0

    def _read(self) -> None:
        if not self._path.is_file():
            return
        with self._path.open("rb") as f:  # opened per read: no descriptor held between tests
            f.seek(self._offset)
            data = f.read()
        whole = data[: data.rfind(b"\n") + 1]
        self._offset += len(whole)
        for line in whole.splitlines():
            report = self._config.hook.pytest_report_from_serializable(
                config=self._config, data=json.loads(line)
            )
            if isinstance(report, pytest.TestReport):
                self._got.setdefault(report.nodeid, []).append(report)

    def _complete(self, nodeid: str) -> bool:
        return any(r.when == "teardown" for r in self._got.get(nodeid, ()))

    def wait_for(self, nodeid: str) -> None:
        """Returns once the test's reports are all in, or the second process has ended."""
        self._read()
        while not self._complete(nodeid):
            ended = self._ended()  # before the read: what it wrote before it ended is read
            self._read()
            if ended:
                return
            time.sleep(0.05)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        if item.nodeid in self.nodeids:
            self.wait_for(item.nodeid)  # here, outside the test's timeout (pytest-timeout)
        return (yield)

    def report(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """The test's reports, told here; what this process set up for the tests before it
        is torn down as far as the next test needs."""
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        reports = self._got.pop(item.nodeid, [])
        if not self._complete_in(reports):
            reports.append(self._missing(item, reports))
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        down = pytest.CallInfo.from_call(
            lambda: item.session._setupstate.teardown_exact(nextitem), when="teardown"
        )
        if down.excinfo is not None:
            ihook.pytest_runtest_logreport(report=pytest.TestReport.from_item_and_call(item, down))
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        self.told += 1

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Once every shared test was told: the share's run failed at its end (its end-of-run
        checks) or left no exit: the run fails here. A run stopped earlier stopped the share."""
        if self.told < len(self.nodeids):
            return
        code, output = self._result()
        if code != 0:
            from llama_orch.testing_engines.workers import fail_run

            fail_run(
                session, f"ORCH-6270: the share's run exited {code}; its output's end:\n{output}"
            )

    @staticmethod
    def _complete_in(reports: list[pytest.TestReport]) -> bool:
        return any(r.when == "teardown" for r in reports)

    def _missing(self, item: pytest.Item, got: list[pytest.TestReport]) -> pytest.TestReport:
        """A failed report of the first phase the other run did not report."""
        whens = {r.when for r in got}
        set_up = any(r.when == "setup" and r.passed for r in got)
        when: Literal["setup", "call", "teardown"] = "teardown"
        if not got:
            when = "setup"
        elif set_up and "call" not in whens:
            when = "call"
        text = (
            f"ORCH-6270: the share's run ended without reporting this test's {when}; its "
            f"output's end:\n{self._result()[1][-6000:]}"
        )
        keywords: dict[str, Any] = {k: 1 for k in item.keywords}
        return pytest.TestReport(item.nodeid, item.location, keywords, "failed", text, when)


class _Teller:
    """The plain ``pytest_runtest_protocol`` of the shared tests: inside the timeout's wrapper,
    after ``Replay``'s wait (a plugin holds one implementation of a hook)."""

    def __init__(self, replay: Replay) -> None:
        self._replay = replay

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> object:
        if item.nodeid not in self._replay.nodeids:
            return None
        self._replay.report(item, nextitem)
        return True


def start_replay(config: pytest.Config, replay: Replay) -> None:
    """Registers the replay's hooks in this process."""
    config.pluginmanager.register(replay, "llama-orch-share-replay")
    config.pluginmanager.register(_Teller(replay), "llama-orch-share-teller")
