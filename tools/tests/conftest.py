"""Fixtures for the tests of the repository tools (``tools/*.py`` are scripts, not packages)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
from llama_orch.testing_engines import share
from llama_orch.testing_engines.workers import is_worker, run_beside

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    module_name = f"llama_orch_tools_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


STANDALONE_TEST = "test_distribution_installs_alone_and_passes_its_tests"
STANDALONE_BATCH = pytest.StashKey[object]()  # a tools/standalone.py BatchProcess (loaded by path)


def gone(pid: int) -> bool:
    """``pid`` has exited (no such process, or a zombie not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def standalone_selected(session: pytest.Session) -> list[str]:
    """The packages whose standalone-install case (``test_standalone_install.py``) will run."""
    return [
        item.callspec.params["package_dir"]  # type: ignore[attr-defined]
        for item in session.items
        if getattr(item, "originalname", None) == STANDALONE_TEST
    ]


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """In one process the standalone installs' runs start with the first test and run beside
    the others (ORCH-6264): the ``alone`` tests, their cases among them, wait for their end.
    On workers the cases start them, in the ``alone`` unit (ORCH-6240)."""
    config = session.config
    if config.option.collectonly or session.testsfailed or is_worker(config):
        return
    if config.pluginmanager.hasplugin("dsession"):  # the xdist controller runs no test
        return
    names = standalone_selected(session)
    if names:
        standalone = _load("standalone")
        scratch = Path(tempfile.mkdtemp(prefix="llama-orch-standalone-"))
        shared = share.prepare(scratch, session.items)  # the batch's process runs them after it
        batch = standalone.BatchProcess(names, scratch, remove=True)
        config.stash[STANDALONE_BATCH] = batch
        run_beside(config, batch)
        if shared:  # ORCH-6270
            replay = share.Replay(config, shared, scratch, batch.ended, batch.share_result)
            share.start_replay(config, replay)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def spec_extract() -> ModuleType:
    return _load("spec_extract")


@pytest.fixture(scope="session")
def gen_config_schema() -> ModuleType:
    return _load("gen_config_schema")


def dockerfile_runs(path: Path | None = None) -> list[str]:
    """The ``RUN`` commands of the Dockerfile, continuation lines joined."""
    text = (path or ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = text.replace("\\\n", " ")
    return [
        " ".join(line.split()[1:])
        for line in text.splitlines()
        if line.split() and line.split()[0] == "RUN"
    ]


@pytest.fixture(scope="session")
def image_install(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Dockerfile's build step, run here: ``tools/build_all.py`` with the image's
    arguments, its paths moved into a temporary directory (ORCH-6204, ORCH-6222).
    One build per test session, shared by test_release.py and test_deploy.py."""
    tmp = tmp_path_factory.mktemp("image")
    (step,) = [r for r in dockerfile_runs() if "tools/build_all.py" in r]
    argv = step.split()
    assert argv[:2] == ["python3", "tools/build_all.py"], step
    moved = {"/build/dist": tmp / "dist", "/opt/llama-orch": tmp / "opt-llama-orch"}
    args = [str(moved.get(a, a)) for a in argv[2:]]
    assert all(not a.startswith("/") or a.startswith(str(tmp)) for a in args), args
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # main() smoke-tests --help from the venv
        assert _load("build_all").main(args) == 0
    (tmp / "build_all.out").write_text(printed.getvalue())
    return {"dist": moved["/build/dist"], "venv": moved["/opt/llama-orch"], "tmp": tmp}
