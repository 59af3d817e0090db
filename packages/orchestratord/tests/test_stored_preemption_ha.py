"""Hard preemption across instances (ORCH-2597, ORCH-2598; proof of ORCH-2599), on
one real valkey-server with mock replicas: the store chooses the run to interrupt
among every live instance's runs, tells its owner on its control channel, and gives a
blocked head one victim however many instances see it blocked."""

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


# as in test_stored_preemption.py (test modules do not import each other here)
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


def _no_dispatch(run: Any) -> None:
    """Stop only this instance's store dispatchers: its runs, leases, heartbeat and
    control channel go on (``stop_dispatching`` would stop them all, as at shutdown)."""
    for loop in run.orch.state._loops:
        if loop.get_name().startswith("store-dispatch-"):
            loop.cancel()


def _preemptions(text: str) -> int:
    m = re.search(r'preemptions_total\{[^}]*mode="hard"[^}]*\} ([0-9.]+)', text)
    return int(float(m.group(1))) if m else 0


async def test_a_head_on_one_instance_preempts_a_run_on_another(
    mock_config: Any, start_orchestrator: Any, valkey_url: str
) -> None:
    """ORCH-2598: A runs a batch task in the only slot and does not dispatch; an
    interactive task submitted to B (which runs nothing) makes the store choose A's
    run and tell A, which interrupts it (``metrics {preempted: true}`` stored before
    the requeue); B runs the interactive task, then continues the batch task from the
    store's log with one terminal."""
    cfg = _hard(mock_config, valkey_url, f"hx{uuid.uuid4().hex[:8]}")
    a, b = await start_orchestrator(cfg), await start_orchestrator(cfg)
    store = a.orch.state.store
    batch = await _tid(a, priority="batch", prompt="long job", max_tokens=60, seed=7)
    await _until_kind(store, batch, lambda ev: ev.kind == "token")
    _no_dispatch(a)
    urgent = await _tid(b, priority="interactive", max_tokens=5)
    assert (await b.events(urgent))[-1][1] == "end"
    events = await b.events(batch)
    _check_resumed(events)
    flags = [n for n, e in enumerate(events) if e[2].get("preempted") is True]
    urgent_log = await store.read(urgent)
    assert urgent_log[-1].kind == "end"
    view = await store.task(batch)
    assert view is not None and view.owner == b.orch.state.instance
    assert sum(e.kind in ("end", "error") for e in await store.read(batch)) == 1
    assert flags and await store.busy("mock") == {}
    assert _preemptions(await a.metrics_text()) == 1
    assert _preemptions(await b.metrics_text()) == 0


async def test_two_instances_seeing_one_head_interrupt_one_run(
    mock_config: Any, start_orchestrator: Any, valkey_url: str
) -> None:
    """ORCH-2597: A and B each run a batch task on one of two one-slot replicas; one
    interactive task blocked behind them wakes both dispatchers, and exactly one run is
    interrupted (summed over both instances); both batch tasks end with one terminal."""
    cfg = _hard(mock_config, valkey_url, f"hy{uuid.uuid4().hex[:8]}")
    cfg.pools[0].endpoints = ["mock://0", "mock://1"]
    a, b = await start_orchestrator(cfg), await start_orchestrator(cfg)
    store = a.orch.state.store
    b1 = await _tid(a, priority="batch", prompt="long job", max_tokens=60, seed=7)
    b2 = await _tid(b, priority="batch", prompt="long job", max_tokens=60, seed=7)
    for t in (b1, b2):
        await _until_kind(store, t, lambda ev: ev.kind == "token")
    owners = {(await store.task(t)).owner for t in (b1, b2)}  # type: ignore[union-attr]
    assert owners == {a.orch.state.instance, b.orch.state.instance}
    urgent = await _tid(a, priority="interactive", max_tokens=5)
    assert (await a.events(urgent))[-1][1] == "end"
    for t in (b1, b2):
        assert (await a.events(t))[-1][1] == "end"
        assert sum(e.kind in ("end", "error") for e in await store.read(t)) == 1
    preempted = [
        t
        for t in (b1, b2)
        if any(e.kind == "metrics" and b'"preempted":true' in e.data for e in await store.read(t))
    ]
    assert len(preempted) == 1, preempted
    total = _preemptions(await a.metrics_text()) + _preemptions(await b.metrics_text())
    assert total == 1
    assert await store.busy("mock") == {}
