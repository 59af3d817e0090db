"""ORCH-2825, ORCH-2826: the daemon process's garbage-collector settings."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest
from llama_orch.orchestratord import main as main_mod
from llama_orch.orchestratord.gcpolicy import YOUNG_THRESHOLD

_PROBE = """
import gc, json
import llama_orch.orchestratord.serve  # what a daemon imports at startup
from llama_orch.orchestratord.gcpolicy import settle
before = gc.get_threshold()
tracked = len(gc.get_objects())
settle()
print(json.dumps({"before": before, "after": gc.get_threshold(), "tracked": tracked,
                  "frozen": gc.get_freeze_count(), "left": len(gc.get_objects())}))
"""


def test_settle_freezes_what_startup_made_and_raises_the_young_threshold() -> None:
    """ORCH-2825: in a fresh interpreter (the test process's own collector is not
    touched), the objects made so far go to the permanent generation and only the
    youngest threshold changes."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    got = json.loads(out.stdout)
    assert got["before"] == [700, 10, 10]  # the interpreter's defaults
    assert got["after"] == [YOUNG_THRESHOLD, 10, 10] and YOUNG_THRESHOLD == 10_000
    assert got["frozen"] >= 0.9 * got["tracked"] > 10_000  # startup's objects, frozen
    assert got["left"] < 0.05 * got["tracked"]  # nothing left for a collection to traverse


async def test_the_console_scripts_run_settles_once_it_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ORCH-2825: ``_run`` (the console script and each ``--workers`` process) applies
    the policy from its ``on_listening`` callback, after startup, once."""
    calls: list[str] = []

    async def fake_serve(config, *, shutdown_trigger, on_listening, reuse_port):
        calls.append("serve")
        assert "settle" not in calls  # not before the server listens
        on_listening("http://127.0.0.1:1", object())
        calls.append("listening")

    monkeypatch.setattr(main_mod, "serve", fake_serve)
    monkeypatch.setattr(main_mod, "settle", lambda: calls.append("settle"))
    await main_mod._run(object(), None)
    assert calls == ["serve", "settle", "listening"]


async def test_serve_in_process_leaves_its_callers_collector_alone(
    start_orchestrator, mock_config
) -> None:
    """ORCH-2825: ``serve`` called in process (tests, embedders) changes neither the
    thresholds nor the permanent generation of the interpreter it runs in."""
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    run = await start_orchestrator(mock_config())  # listening, its pool ready
    assert run.orch.pools["mock"].ready_replicas()
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == frozen
