"""serve() enters every resource on one exit stack: a stopped or failed start leaves
no task of the daemon behind (ORCH-4123)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from llama_orch.orchestratord.errors import StartupError
from llama_orch.orchestratord.serve import serve

from .conftest import _mock_config


def _others(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t not in before and not t.done()}


async def test_a_start_and_stop_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    listening = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(_mock_config(), shutdown_trigger=stop.wait, on_listening=lambda *_: listening.set())
    )
    await asyncio.wait_for(listening.wait(), 30)
    assert _others(before) - {task}, "the daemon runs tasks while it serves"
    stop.set()
    await asyncio.wait_for(task, 30)
    assert not _others(before)


async def test_a_failed_start_stops_what_it_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded pool manager cannot be imported: serve() fails after the
    orchestrator's own loops and the endpoint connections started."""
    monkeypatch.setitem(sys.modules, "llama_orch.pool_managerd.pool", None)
    config = _mock_config()
    config.pools.append(_mock_config(id="local", endpoints=[]).pools[0])
    before = asyncio.all_tasks()
    with pytest.raises(StartupError, match="embedded pool manager"):
        await asyncio.wait_for(serve(config), 30)
    assert not _others(before)
