"""The suite on several worker processes (pytest-xdist, ORCH-6240).

Groups: tests marked ``alone`` (timing-bound gates, ORCH-6258) run last, on one worker,
once the other worker has ended, so no other test competes with them for the cores; the
mark outranks a group fixture (the standalone installs' batch runs in that one unit). Tests that
share a session engine which takes tens of seconds to start (vLLM,
Triton), or a module fixture that runs a whole batch for all its tests (the standalone
installs, the image build), run on one worker, so that engine or batch runs once. Under
``--dist loadgroup`` the controller schedules by these groups; each worker names them from
its items' fixtures (and any explicit ``xdist_group`` mark) in a file the controller reads.
xdist's own loadgroup renames node ids, which pytest 9.2 no longer honours.

End-of-run checks: some look at the whole run once it is over: no process left behind
(ORCH-6008), no API key in any log record (ORCH-8008). Under pytest-xdist each worker runs
its own session and the exit status of the run is the controller's, so a failure a worker
finds at its end travels to the controller in the worker's output and fails the run there.
Without workers the same call fails the run directly.

In one process (ORCH-6264): the tests that need no real engine run first, then the real-engine
ones, then the tests marked ``alone``, each part in its collected order. Work registered with
``run_beside`` (the standalone installs' batch) runs in the background beside the first part:
the first real-engine or ``alone`` test starts only once it has ended, and the end of the
tests' loop stops whatever of it still runs (a failed or interrupted run, ORCH-6265). The
batch's process then runs a share of the first part (``share``, ORCH-6270), whose tests come
last in that part here, where their reports are told.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any, Protocol

import pytest
from llama_orch.testing_engines.share import is_shared

__all__ = ["GROUPS", "Beside", "fail_run", "is_worker", "run_beside"]

# fixture -> group: tests using the fixture share one worker
GROUPS = {
    "vllm_server": "vllm",
    "triton_server": "triton",
    "standalone_runs": "standalone",
    "image_install": "image",
}
_GROUP_FILE = "llama_orch_group_file"
_REPEAT = "\x00"  # the scheduler's mark of a repeated node id
_group_file: list[str] = []  # the controller's, made for the first worker

_KEY = "llama_orch_end_of_run_failures"
_failures: list[str] = []


def is_worker(config: pytest.Config) -> bool:
    """True in a pytest-xdist worker process."""
    return hasattr(config, "workerinput")


def fail_run(session: pytest.Session, message: str) -> None:
    """Fails the whole test run, naming why, from a worker or from the only process."""
    output: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if output is not None:
        output.setdefault(_KEY, []).append(message)
    else:
        _failures.append(message)


ALONE = "alone"  # the group of tests marked ``alone``
REAL_ENGINE = "real_engine"


class Beside(Protocol):
    """Work that runs in the background of a one-process run (ORCH-6264)."""

    def wait(self) -> None:
        """Returns once the work has ended, whatever its outcome."""

    def stop(self) -> None:
        """Ends the work and every process it started; returns once they are gone."""


_BESIDE = pytest.StashKey[list[Beside]]()
_ENDED = pytest.StashKey[bool]()  # False while registered work may still run


def run_beside(config: pytest.Config, work: Beside) -> None:
    """Registers started work: the ``alone`` tests wait for its end, the session's end stops it."""
    config.stash.setdefault(_BESIDE, []).append(work)
    config.stash[_ENDED] = False


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """A real-engine or ``alone`` test starts once the work beside the run has ended (the wait
    outside its timeout)."""
    config = item.config
    if not config.stash.get(_ENDED, True) and _part(item) > 0:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        for work in config.stash[_BESIDE]:
            start = time.monotonic()
            work.wait()
            if reporter is not None:
                waited = time.monotonic() - start
                reporter.write_line(f"[beside] {work} has ended (waited {waited:.1f} s)")
        config.stash[_ENDED] = True
    return (yield)


def _part(item: pytest.Item) -> int:
    """Its part of a one-process run: 0 no real engine, 1 a real engine, 2 ``alone``."""
    if item.get_closest_marker(ALONE) is not None:
        return 2
    return 1 if item.get_closest_marker(REAL_ENGINE) is not None else 0


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    """Once the tests have run, or the run failed or was interrupted, stops the work beside
    it, before the end-of-run checks look for processes left behind (ORCH-6008, ORCH-6265)."""
    try:
        return (yield)
    finally:
        for work in session.config.stash.get(_BESIDE, []):
            work.stop()


def _group_of(item: pytest.Item) -> str | None:
    if item.get_closest_marker(ALONE) is not None:
        return ALONE
    mark = item.get_closest_marker("xdist_group")
    if mark is not None:
        return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    names = getattr(item, "fixturenames", ())
    return next((group for fixture, group in GROUPS.items() if fixture in names), None)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """On the controller: where the workers write the groups."""
    if not _group_file:
        fd, path = tempfile.mkstemp(prefix="llama-orch-xdist-groups-", suffix=".json")
        os.close(fd)
        _group_file.append(path)
    node.workerinput[_GROUP_FILE] = _group_file[0]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In one process: the tests without a real engine, then the real-engine ones, then the
    ``alone`` ones, each part in its collected order (ORCH-6264). On a worker: every collected
    test's group, for the controller's scheduler, which holds the ``alone`` tests back itself
    (``pytest_xdist_make_scheduler``)."""
    if not is_worker(config):
        items.sort(key=lambda item: (_part(item), is_shared(item)))  # the share last (ORCH-6270)
        return
    workerinput: dict[str, Any] = getattr(config, "workerinput", {})
    path = workerinput.get(_GROUP_FILE)
    if not path:
        return
    groups = {item.nodeid: g for item in items if (g := _group_of(item)) is not None}
    tmp = f"{path}.{os.getpid()}"
    Path(tmp).write_text(json.dumps(groups, sort_keys=True))
    os.replace(tmp, path)  # both workers write the same map; the controller reads one whole


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """On the controller, with ``--dist loadgroup``: one work unit per group, every other
    test its own unit (xdist's ``load``), the largest units first; the tests marked
    ``alone`` last, on one worker, once every other worker has ended."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import (  # type: ignore[import-untyped]  # reason: xdist ships no types
        LoadScopeScheduling,
    )

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]  # reason: untyped base
        def __init__(self, config: pytest.Config, log: Any) -> None:
            super().__init__(config, log)
            self._groups: dict[str, str] | None = None
            self._alone: dict[str, dict[str, bool]] = {}  # held back until the others end
            self._held = False
            self._alone_node: Any = None

        def add_node_collection(self, node: Any, collection: list[str]) -> None:
            # Some plugins' items share a node id (schemathesis: one per API operation).
            # The scope scheduler keys its work by node id and would run one of each, so
            # the k-th repeat is told apart by a suffix the scheduler alone sees.
            seen: dict[str, int] = {}
            unique = []
            for nodeid in collection:
                k = seen[nodeid] = seen.get(nodeid, -1) + 1
                unique.append(f"{nodeid}{_REPEAT}{k}" if k else nodeid)
            super().add_node_collection(node, unique)

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:  # read once all workers have collected
                text = Path(_group_file[0]).read_text() if _group_file else ""
                self._groups = json.loads(text) if text else {}
            base = nodeid.split(_REPEAT, 1)[0]
            group = self._groups.get(base)
            return group if group is not None else nodeid

        def _assign_work_unit(self, node: Any) -> None:
            if not self._held:
                self._held = True
                # held back only when the first assignments cannot exhaust the rest of the
                # work (a short run just runs them with the others)
                if ALONE in self.workqueue and len(self.workqueue) > 2 * len(self.nodes) + 1:
                    self._alone[ALONE] = self.workqueue.pop(ALONE)
            super()._assign_work_unit(node)

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if self.workqueue or not self._alone:
                super()._reschedule(node)
                return
            if self._alone_node is None:  # the first worker out of work runs them
                self._alone_node = node
                for other in self.nodes:
                    if other is not node and not other.shutting_down:
                        other.shutdown()  # it runs what it holds, then ends
            self._release_alone()

        def remove_node(self, node: Any) -> Any:
            crashed = super().remove_node(node)
            if node is self._alone_node:  # ended before it got them: another takes them
                self._alone_node = None
                live = [n for n in self.nodes if not n.shutting_down]
                if self._alone and live:
                    self._reschedule(live[0])
            else:
                self._release_alone()
            return crashed

        def _release_alone(self) -> None:
            node = self._alone_node
            if node is None or not self._alone or self.workqueue:
                return
            if any(n is not node for n in self.nodes):
                return  # another worker still runs its last tests
            self.workqueue.update(self._alone)
            self._alone.clear()
            super()._assign_work_unit(node)

        @property
        def tests_finished(self) -> bool:
            return not self._alone and bool(super().tests_finished)

        @property
        def has_pending(self) -> bool:
            return bool(self._alone) or bool(super().has_pending)

    return GroupScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """On the controller: what a finished worker found at its end."""
    output = getattr(node, "workeroutput", None) or {}
    worker = getattr(node, "gateway", None)
    name = getattr(worker, "id", "worker")
    _failures.extend(f"[{name}] {m}" for m in output.get(_KEY, []))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for path in _group_file:
        Path(path).unlink(missing_ok=True)
    if is_worker(session.config) or not _failures:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for message in _failures:
        if reporter is not None:
            reporter.write_line(message, red=True)
        else:
            print(message, file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
