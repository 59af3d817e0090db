"""The state-store seam in core: plugin loading, continuation, lease keeping (ORCH-2501, ORCH-2511).

The behaviour of both backends is proven by the conformance suite
(``llama_orch.testing.state_store``), run in packages/testing and packages/state-valkey.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import msgspec
import pytest
from llama_orch.core.api import TokenEvent
from llama_orch.core.errors import ErrorCode
from llama_orch.core.state_lease import LeaseKeeper
from llama_orch.core.state_memory import MemoryStateStore
from llama_orch.core.state_store import (
    Dispatched,
    Event,
    LoggedEvent,
    PoolPolicy,
    SlotView,
    StateOptions,
    StoreConfig,
    StoreUnavailable,
    TaskSpec,
    UnknownStateStore,
    continuation,
    displaced_terminal,
    load_state_store_class,
)


def test_memory_backend_is_registered_by_name() -> None:
    """ORCH-2501: `memory` resolves through the llama_orch.state_stores group."""
    cls = load_state_store_class("memory")
    assert cls is MemoryStateStore
    assert isinstance(cls.from_options(StateOptions()), MemoryStateStore)


def test_unknown_backend_is_a_typed_error() -> None:
    """ORCH-2501: a missing plugin fails with a message naming the known ones."""
    with pytest.raises(UnknownStateStore, match="memory"):
        load_state_store_class("no-such-store")


def test_continuation_rebuilds_text_and_next_index() -> None:
    """ORCH-2511: text so far and the next token index come from the log alone."""
    log = [LoggedEvent(0, "started", b"{}")] + [
        LoggedEvent(n + 1, "token", msgspec.json.encode(TokenEvent(t, n)))
        for n, t in enumerate(["The", " sky", " is"])
    ]
    assert continuation(log) == ("The sky is", 3, True, False)
    assert continuation([]) == ("", 0, False, False)


def test_continuation_of_an_ended_log_says_so() -> None:
    """ORCH-2567: a log that already holds its terminal (a cancel that landed between
    a claim and the read of the log) is not something to continue."""
    log = [LoggedEvent(0, "started", b"{}"), LoggedEvent(1, "token", b'{"t":"Hi","i":0}')]
    assert not continuation(log).ended
    for kind in ("end", "error"):
        done = continuation([*log, LoggedEvent(2, kind, b"{}")])
        assert done.ended and done.text == "Hi" and done.next_index == 1


def test_displaced_terminal_carries_the_policy_code() -> None:
    """ORCH-2506: the store-written terminal is a regular `error` event."""
    ev = displaced_terminal(ErrorCode.QUEUE_FULL_DROP_LRU)
    assert ev.kind == "error"
    assert msgspec.json.decode(ev.data)["code"] == "QUEUE_FULL_DROP_LRU"


# ------------------------------------------------------------------ LeaseKeeper


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _running(store: MemoryStateStore, *ids: str) -> dict[str, int]:
    await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=10)}))
    await store.set_replicas("p", [SlotView(replica_id="r", set_key="A", ready=True, slots=9)])
    out = {}
    for tid in ids:
        await store.submit(TaskSpec(task_id=tid, pool="p", priority="batch"))
        d = await store.dispatch("p", "me", 1000)
        assert isinstance(d, Dispatched)
        out[tid] = d.epoch
    return out


async def test_held_leases_are_renewed_and_never_reaped() -> None:
    """ORCH-2511: an instance renewing its leases keeps its tasks past the first lease."""
    clock, lost = _Clock(), []
    store = MemoryStateStore(clock=clock)
    keeper = LeaseKeeper(store, "me", 1000, on_lost=lost.append, clock=clock)
    for tid, epoch in (await _running(store, "a", "b")).items():
        keeper.hold(tid, epoch)
    for _ in range(5):
        clock.now += 0.6
        assert await keeper.renew_once() == []
        assert await store.reap("other", 1000) == []
    keeper.release("b")  # b is no longer renewed; a still is
    clock.now += 0.6
    await keeper.renew_once()
    clock.now += 0.6
    assert [r.task_id for r in await store.reap("other", 1000)] == ["b"]
    assert lost == []


async def test_a_taken_over_lease_is_reported_lost_once() -> None:
    """ORCH-2511, ORCH-2509: after a takeover the old owner learns it lost the task."""
    clock, lost = _Clock(), []
    store = MemoryStateStore(clock=clock)
    keeper = LeaseKeeper(store, "me", 1000, on_lost=lost.append, clock=clock)
    epochs = await _running(store, "a")
    keeper.hold("a", epochs["a"])
    await store.append("a", epochs["a"], [Event("started", b"{}")])
    clock.now += 2  # paused past the lease
    heir = LeaseKeeper(store, "heir", 1000, on_lost=lambda t: None, clock=clock)
    (r,) = await heir.reap_once()
    assert r.outcome == "claimed" and heir.held == {"a": r.epoch}
    assert await keeper.renew_once() == ["a"]
    assert await keeper.renew_once() == []
    assert lost == ["a"] and keeper.held == {}


class _Unreachable(MemoryStateStore):
    async def renew(self, instance: str, leases: Mapping[str, int], lease_ms: int) -> list[str]:
        raise StoreUnavailable("down")


async def test_store_unreachable_for_a_lease_loses_every_task() -> None:
    """ORCH-2516: ownership that cannot be proven for one lease is given up."""
    clock, lost = _Clock(), []
    store = _Unreachable(clock=clock)
    keeper = LeaseKeeper(store, "me", 1000, on_lost=lost.append, clock=clock)
    for tid, epoch in (await _running(store, "a", "b")).items():
        keeper.hold(tid, epoch)
    clock.now += 0.5
    assert await keeper.renew_once() == []  # within one lease: keep going
    clock.now += 0.6
    assert sorted(await keeper.renew_once()) == ["a", "b"]
    assert sorted(lost) == ["a", "b"]


async def test_run_renews_until_stopped() -> None:
    """ORCH-2511: the loop renews each period and ends when its stop event is set."""
    store = MemoryStateStore()
    keeper = LeaseKeeper(store, "me", 1000, on_lost=lambda t: None)
    for tid, epoch in (await _running(store, "a")).items():
        keeper.hold(tid, epoch)
    stop = asyncio.Event()
    calls = []
    real = store.renew

    async def counting(*a: object, **k: object) -> list[str]:
        calls.append(1)
        if len(calls) == 3:
            stop.set()
        return await real(*a, **k)  # type: ignore[arg-type]

    store.renew = counting  # type: ignore[method-assign]
    await asyncio.wait_for(keeper.run(stop, every_s=0.01), 30)
    assert len(calls) == 3


async def test_memory_tail_sees_events_appended_while_it_was_suspended() -> None:
    """ORCH-2508: ``tail`` follows the log to the terminal even when every later
    event (the terminal included) was appended while the reader sat at a ``yield``
    (found by bench/ha_relay.py: store-fed streams of fast engines hung)."""
    store = MemoryStateStore()
    await store.start()
    await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=4)}))
    await store.set_replicas("p", [SlotView(replica_id="r", set_key="A", ready=True, slots=1)])
    await store.submit(TaskSpec(task_id="t", pool="p", priority="batch"))
    d = await store.dispatch("p", "i", 60_000)
    assert isinstance(d, Dispatched)
    await store.append("t", d.epoch, [Event("started", b"{}")])
    events = store.tail("t")
    first = await anext(events)  # the reader is now suspended at its yield
    await store.append("t", d.epoch, [Event("token", b"{}"), Event("token", b"{}")])
    await store.append("t", d.epoch, [Event("end", b"{}")])
    rest = [ev async for ev in _bounded(events, 5.0)]
    assert [first.kind, *(ev.kind for ev in rest)] == ["started", "token", "token", "end"]


async def _bounded(events, timeout_s: float):  # type: ignore[no-untyped-def]
    while True:
        try:
            yield await asyncio.wait_for(anext(events), timeout_s)
        except StopAsyncIteration:
            return
