"""ORCH-5003, ORCH-5100, ORCH-5101 on the real stack, under a pseudo-terminal:
``llorch demo`` = orchestratord + embedded pool manager + real llama-server +
Qwen2.5-Coder-0.5B; the live view shows three tenants, a cancel, a 429 with
``Retry-After``; the Haiku streams as the finale; nothing is left running."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
import uuid
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.real_engine

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


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


@pytest.mark.timeout(900)  # warm it takes well under a minute; a loaded CI machine is slower
def test_demo_shows_orchestration_live_then_a_real_haiku(llama_server_binary, qwen_model):
    tag = uuid.uuid4().hex
    llorch = Path(sys.executable).with_name("llorch")
    env = {**os.environ, "LLORCH_TEST_TAG": tag, "TERM": "xterm-256color", "COLUMNS": "160"}
    started = time.monotonic()
    child = pexpect.spawn(
        str(llorch), ["demo"], env=env, dimensions=(60, 160), timeout=840, encoding="utf-8"
    )
    try:
        child.expect(pexpect.EOF, timeout=840)
        wall_s = time.monotonic() - started
        child.close()
    finally:
        if child.isalive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.close(force=True)
        for pid in _tagged_pids(tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    raw = child.before or ""
    text = _ANSI.sub("", raw)
    print(f"llorch demo wall time under a pty: {wall_s:.1f} s")
    print(text[text.rfind("── orchestration ──") :][:1500])  # the measured figures, for the log
    assert child.exitstatus == 0, text[-4000:]
    assert "\x1b[" in raw  # a live view was drawn, not plain lines (ORCH-5101)
    assert "pool 'default' is ready" in text
    for tenant in ("acme", "globex", "initech"):  # ORCH-5100: three tenants in the view
        assert re.search(rf"{tenant}\W+\d+\W+\d+%", text), tenant  # name, weight, share
    assert "canceled running task" in text and "took the freed slot" in text
    match = re.search(r"refused: 429 ADMISSION_REJECT with Retry-After: (\d+) s", text)
    assert match, text[-4000:]
    assert "Haiku task" in text and "minute words" in text and "tokens out" in text
    assert qwen_model[1] in text  # model_digest from the started event
    assert llama_server_binary.engine_version in text
    assert "── orchestration ──" in text and "demo complete" in text
    assert _tagged_pids(tag) == [], "a process started by the demo is still running"
