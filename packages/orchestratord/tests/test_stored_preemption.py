"""Hard preemption with a state store (ORCH-2579, ORCH-2580), on a real valkey-server
with one mock replica of one slot: a batch task holds the slot, an interactive task
arrives; the batch task is interrupted, goes back to the store's queue, and resumes by
continuation (one ``started``, ``metrics {preempted: true}`` then ``{preempted:
false}``, contiguous token indices, one ``end``) on the same instance, or on another
instance from the store's log."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from llama_orch.adapters.mock._text import token_text
from llama_orch.core.config import Config, StateOptions
from llama_orch.testing_engines.valkey import valkey_server


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_server(tmp_path_factory.mktemp("valkey")) as url:
        yield url


def _hard(mock_config: Any, url: str, prefix: str) -> Config:
    cfg: Config = mock_config(adapter_options={"token_delay_ms": 10})
    cfg.scheduling.preemption = "hard"
    cfg.state = msgspec.convert(
        {"backend": "valkey", "url": url, "key_prefix": prefix, "lease_ms": 3000}, StateOptions
    )
    return cfg


async def _tid(run: Any, **body: Any) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    tid: str = (await resp.json())["task_id"]
    return tid


async def _until_kind(store: Any, tid: str, pred: Any) -> None:
    async with contextlib.aclosing(store.tail(tid)) as log:
        async for ev in log:
            if pred(ev):
                return
    raise AssertionError(f"{tid}: the log ended first")


def _check_resumed(events: list[tuple[int, str, dict[str, Any]]]) -> None:
    """ORCH-1903 on what a client reads: one started, preempted true then false,
    contiguous indices, one end, the continuation of prompt + text so far."""
    kinds = [e[1] for e in events]
    assert kinds.count("started") == 1, kinds
    assert [k for k in kinds if k in ("end", "error")] == ["end"] and kinds[-1] == "end"
    assert [i for i, _, _ in events] == list(range(len(events)))  # SSE ids
    flags = [(n, e[2]["preempted"]) for n, e in enumerate(events) if "preempted" in e[2]]
    assert [f for _, f in flags] == [True, False], flags
    tokens = [(e[2]["i"], e[2]["t"]) for e in events if e[1] == "token"]
    assert [i for i, _ in tokens] == list(range(len(tokens)))
    cut = sum(1 for e in events[: flags[0][0]] if e[1] == "token")
    before, after = [t for _, t in tokens[:cut]], [t for _, t in tokens[cut:]]
    assert before and after
    assert after[0] == token_text(7, "long job" + "".join(before), 0)
    assert events[-1][2]["reason"] == "length" and events[-1][2]["tokens_out"] == 60


async def test_hard_preemption_through_the_store(
    mock_config: Any, start_orchestrator: Any, valkey_url: str
) -> None:
    """ORCH-2579: the interactive task takes the batch task's slot at once; the batch
    task resumes on this instance (ORCH-1903) with exactly one terminal at the store."""
    run = await start_orchestrator(_hard(mock_config, valkey_url, f"hp{uuid.uuid4().hex[:8]}"))
    store = run.orch.state.store
    batch = await _tid(run, priority="batch", prompt="long job", max_tokens=60, seed=7)
    await _until_kind(store, batch, lambda ev: ev.kind == "token")
    urgent = await _tid(run, priority="interactive", max_tokens=5)
    urgent_events = await run.events(urgent)
    assert urgent_events[-1][1] == "end"
    started = next(e[2] for e in urgent_events if e[1] == "started")
    assert started["queue_wait_ms"] < 1000  # long before the batch task's 60 tokens
    events = await run.events(batch)
    _check_resumed(events)
    assert sum(e.kind in ("end", "error") for e in await store.read(batch)) == 1
    assert await store.busy("mock") == {}
    text = await run.metrics_text()
    assert re.search(r'preemptions_total\{[^}]*mode="hard"[^}]*\} 1\.0', text)
    assert re.search(r'resumptions_total\{[^}]*engine="mock"[^}]*\} 1\.0', text)


async def test_a_task_preempted_on_one_instance_resumes_on_another(
    mock_config: Any, start_orchestrator: Any, valkey_url: str
) -> None:
    """ORCH-2580: instance A runs the batch task and interrupts it for the interactive
    task (B, with no run below the head, interrupts nothing); A then stops dispatching,
    so B dispatches the batch task once the slot is free: B continues it from the
    store's log (the text so far, the next index), announced by preempted: false."""
    cfg = _hard(mock_config, valkey_url, f"hq{uuid.uuid4().hex[:8]}")
    a, b = await start_orchestrator(cfg), await start_orchestrator(cfg)
    store = a.orch.state.store
    batch = await _tid(a, priority="batch", prompt="long job", max_tokens=60, seed=7)
    await _until_kind(store, batch, lambda ev: ev.kind == "token")
    urgent = await _tid(a, priority="interactive", max_tokens=30)
    await _until_kind(store, urgent, lambda ev: ev.kind == "started")
    a.orch.state.stop_dispatching()  # the batch task is queued at the store again
    events = await b.events(batch)
    _check_resumed(events)
    view = await store.task(batch)
    assert view is not None and view.owner == b.orch.state.instance
    assert (await b.events(urgent))[-1][1] == "end"
    assert await store.busy("mock") == {}
    text = await a.metrics_text()
    assert re.search(r'preemptions_total\{[^}]*mode="hard"[^}]*\} 1\.0', text)
