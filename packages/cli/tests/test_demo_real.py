"""ORCH-5003 on the real stack: ``llorch demo`` = orchestratord + embedded pool manager +
real llama-server + Qwen2.5-Coder-0.5B, a streamed Haiku task, a clean shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_engine


def _tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ``tag`` (inherited by every descendant)."""
    found = []
    needle = f"LLORCH_TEST_TAG={tag}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def test_demo_streams_a_real_haiku_and_leaves_nothing_running(llama_server_binary, qwen_model):
    tag = uuid.uuid4().hex
    llorch = Path(sys.executable).with_name("llorch")
    env = {**os.environ, "LLORCH_TEST_TAG": tag}
    proc = subprocess.Popen(
        [str(llorch), "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=280)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _tagged_pids(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "pool 'default' is ready" in text
    assert "tokens out" in text and "end reason" in text
    assert qwen_model[1] in text  # model_digest from the started event
    assert llama_server_binary.engine_version in text
    assert _tagged_pids(tag) == [], "a process started by the demo is still running"
