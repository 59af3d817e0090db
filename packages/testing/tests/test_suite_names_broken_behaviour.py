"""The suite fails, naming the behaviour, when an adapter breaks a mapping (ORCH-4012).

A subclass of the mock adapter with one deliberately broken mapping is run
through the suite in a child pytest; the child must fail exactly the check
for that behaviour, with the behaviour's name in the message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BROKEN = """
import pytest
from llama_orch.adapters.mock import MockAdapter
from llama_orch.core.adapter_api import AdapterTarget, Finished
from llama_orch.testing import AdapterConformance, EngineUnderTest, Expectations


class Broken(MockAdapter):
    async def generate(self, req):
        async for ev in super().generate(req):
            if isinstance(ev, Finished) and BREAK == "length":
                ev = Finished(reason="eos", tokens_generated=ev.tokens_generated,
                              prompt_tokens=ev.prompt_tokens)
            yield ev

    async def cancel(self, task_id):
        if BREAK != "cancel":
            await super().cancel(task_id)


class TestBroken(AdapterConformance):
    engine_label = "broken-mock"

    @pytest.fixture
    def engine_under_test(self):
        return EngineUnderTest(
            engine="mock",
            make_adapter=lambda: Broken(AdapterTarget(replica_id="b", options={"ctx": 256,
                                                        "token_delay_ms": 1})),
            expect=Expectations(timeout_s=5),
        )
"""


@pytest.mark.parametrize(
    ("brk", "test", "message"),
    [
        ("length", "test_stop_reason_length", "[stop reason: length]"),
        ("cancel", "test_cancel_by_task_id_ends_with_canceled", "[cancel: cancel(task_id)]"),
    ],
)
def test_broken_mapping_fails_with_the_behaviour_named(
    tmp_path: Path, brk: str, test: str, message: str
) -> None:
    (tmp_path / "test_broken.py").write_text(f"BREAK = {brk!r}\n" + BROKEN)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",  # autoload is off (ORCH-6260): the one plugin this run needs
            "pytest_asyncio.plugin",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            "--basetemp",  # ORCH-6257
            str(tmp_path / "pytest-tmp"),
            "-k",
            test,
            str(tmp_path / "test_broken.py"),
        ],
        cwd=tmp_path,
        # ORCH-6260: not the workspace's ~9 s of autoloaded plugins for a run of one test
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert f"FAILED test_broken.py::TestBroken::{test}[broken-mock]" in out, out[-3000:]
    assert message in out, out[-3000:]
    assert "1 failed" in out, out[-3000:]
