"""Fakes for fast pool-manager tests: a tiny HTTP "engine" and an in-process adapter.

The fake engine is a real child process (so process-group handling, the
watcher and stop() are exercised for real); only the model is missing. Real
llama-server tests live in ``test_pool_real.py`` and ``test_main.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from llama_orch.core.adapter_api import (
    AdapterEvent,
    EngineMetrics,
    EngineProps,
    Finished,
    GenerateRequest,
    Health,
    TokenChunk,
    WorkerAdapter,
)
from llama_orch.core.errors import WorkerReset

FAKE_ENGINE = """\
import http.server, os, sys, time
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
mode = os.environ.get("FAKE_ENGINE_MODE", "ok")
print("fake engine", " ".join(args), flush=True)
if mode == "crash":
    print("error: failed to load model", flush=True)
    sys.exit(3)
if mode == "hang":
    time.sleep(3600)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if mode == "slow-health":
            time.sleep(0.4)  # a busy engine: slow, but it answers
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *a):
        pass

http.server.HTTPServer((host, port), Health).serve_forever()
"""


class FakeAdapter(WorkerAdapter):
    """Decodes one token without any HTTP; ``options['fail']`` makes it fail."""

    engine = "llamacpp-http"

    async def health(self) -> Health:
        return Health(live=True, ready=True)

    async def props(self) -> EngineProps:
        return EngineProps(
            engine=self.engine,
            engine_version=self.target.engine_version,
            model_ref=self.target.model_ref,
            model_digest=self.target.model_digest,
            slots=int(self.target.options.get("slots", 2)),
            ctx=512,
        )

    async def generate(self, req: GenerateRequest) -> AsyncIterator[AdapterEvent]:
        if self.target.options.get("fail"):
            raise WorkerReset("fake decode failure")
        yield TokenChunk("!")
        yield Finished(reason="length", tokens_generated=req.max_tokens)

    async def cancel(self, task_id: str) -> None:
        return None

    async def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def metrics(self) -> EngineMetrics:
        return EngineMetrics()


@pytest.fixture
def fake_engine(tmp_path: Path) -> Path:
    path = tmp_path / "fake-llama-server"
    path.write_text(f"#!{sys.executable}\n{FAKE_ENGINE}")
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)))
    return path


@pytest.fixture
def fake_adapter(monkeypatch: pytest.MonkeyPatch) -> type[WorkerAdapter]:
    monkeypatch.setattr(
        "llama_orch.pool_managerd.pool.load_adapter_class", lambda engine: FakeAdapter
    )
    return FakeAdapter


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def pid_alive() -> Callable[[int], bool]:
    return _pid_alive


@pytest.fixture
def reap_pids() -> Iterator[list[int]]:
    """Pids a test saw; their groups are killed at teardown if a test failed."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
