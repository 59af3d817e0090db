"""ORCH-2803: a run's last frames are written to the client's socket before the
dispatcher's release (the run's done-callback: the service-time model, the slot, the
session) settles the task, and awaiting the run still means the slot is free."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_orch.orchestratord.dispatch import Dispatcher
from llama_orch.orchestratord.writes import CoalescingWriter


async def test_the_end_frame_is_flushed_before_the_release(
    start_orchestrator: Any, mock_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    flush, release = CoalescingWriter.flush, Dispatcher.release

    def flushing(self: CoalescingWriter) -> None:
        pending = b"".join(getattr(self, "_pending"))  # noqa: B009 (the test's own peek)
        if b"event: end" in pending:
            order.append("end written")
        flush(self)

    def releasing(self: Dispatcher, *args: Any) -> None:
        order.append("release")
        release(self, *args)

    monkeypatch.setattr(CoalescingWriter, "flush", flushing)
    monkeypatch.setattr(Dispatcher, "release", releasing)
    run = await start_orchestrator(mock_config(adapter_options={"slots": 1}))
    replica = next(iter(run.orch.pools["mock"].replicas.values()))
    for _ in range(3):  # the whole answer in one turn (0 ms/token) and back to back
        order.clear()
        async with run.http.post(
            run.url + "/v1/tasks",
            json={"prompt": "hello", "max_tokens": 4},
            headers={"Accept": "text/event-stream"},
        ) as resp:
            assert resp.status == 200
            text = (await resp.read()).decode()
        assert "event: end" in text
        tid = resp.headers["X-Task-Id"]
        await asyncio.wait_for(run.orch.get(tid).ended.wait(), 5)
        runner = run.orch.get(tid).runner
        assert runner is not None
        await asyncio.wait_for(asyncio.shield(runner), 5)
        assert replica.busy == 0  # the release is still the run's done-callback
        assert order == ["end written", "release"]
