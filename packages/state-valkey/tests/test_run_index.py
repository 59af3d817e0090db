"""The index of running tasks ``llorch_preempt`` walks (ORCH-2606, ORCH-2607), read
directly on a real valkey-server: after a seeded replay it holds exactly the running
tasks, each under its pool, priority, replica and owner with its epoch; a withdrawn
admission (ORCH-2551) leaves it, a claimed run (ORCH-2511) moves to its new owner's
key; once every task ended it is empty (no key is left)."""

from __future__ import annotations

import asyncio

import pytest
from llama_orch.core.state_store import Dispatched, Event, TaskSpec
from llama_orch.state_valkey import ValkeyStateStore
from llama_orch.testing._state_replay import replay

pytestmark = pytest.mark.asyncio


async def _index(store: ValkeyStateStore, p: str) -> dict[str, tuple[str, int]]:
    """task -> (its index key without the prefix, its score) over every index key."""
    out: dict[str, tuple[str, int]] = {}
    async for key in store.client.scan_iter(match=f"{p}run:*", count=1000):
        for tid, score in await store.client.zrange(key, 0, -1, withscores=True):
            assert tid.decode() not in out, f"{tid!r} is in two index keys"
            out[tid.decode()] = (key.decode()[len(p) :], int(score))
    return out


async def _running(store: ValkeyStateStore, p: str) -> dict[str, tuple[str, int]]:
    """What the index must hold: every leased (running) task by its own record."""
    out: dict[str, tuple[str, int]] = {}
    for tid in await store.client.zrange(f"{p}leases", 0, -1):
        f = [
            x.decode()
            for x in await store.client.hmget(
                f"{p}t:{tid.decode()}", "state", "pool", "prio", "replica", "owner", "epoch"
            )
        ]
        assert f[0] == "running", (tid, f)
        out[tid.decode()] = (f"run:{f[1]}:{f[2]}:{f[3]}:{f[4]}", int(f[5]))
    return out


async def test_the_index_holds_exactly_the_running_tasks(
    prefixed_store: tuple[ValkeyStateStore, str],
) -> None:
    store, p = prefixed_store
    await replay(store, "drop-lru", 2500)
    running = await _running(store, p)
    assert len(running) >= 3, "the replay must leave runs"
    assert await _index(store, p) == running
    for tid in running:
        await store.cancel(tid)
    assert await _index(store, p) == {}
    assert [k async for k in store.client.scan_iter(match=f"{p}run:*")] == []


async def test_a_withdrawn_run_leaves_the_index(
    prefixed_store: tuple[ValkeyStateStore, str],
) -> None:
    store, p = prefixed_store
    await replay(store, "reject", 2599)  # the rules and replicas of the replay
    spec = TaskSpec(task_id="w1", pool="p", priority="batch", tenant="a")
    for tid in await store.queued("p"):  # free the queue so w1 is the head
        await store.cancel(tid)
    for tid in await _running(store, p):  # and free the slots
        await store.cancel(tid)
    await store.submit(spec)
    d = await store.dispatch("p", "i", 60_000)
    assert isinstance(d, Dispatched) and d.task.task_id == "w1"
    assert set(await _index(store, p)) == {"w1"}
    got = await store.client.fcall("llorch_withdraw", 1, p, "w1")  # type: ignore[misc]
    assert got == [b"OK", b"running"]
    assert await _index(store, p) == {}


async def test_a_claimed_run_moves_to_its_new_owner(
    prefixed_store: tuple[ValkeyStateStore, str],
) -> None:
    store, p = prefixed_store
    await replay(store, "reject", 2500)
    for tid in await store.queued("p"):
        await store.cancel(tid)
    for tid in await _running(store, p):
        await store.cancel(tid)
    await store.submit(TaskSpec(task_id="c1", pool="p", priority="batch", tenant="a"))
    d = await store.dispatch("p", "gone", 100)
    assert isinstance(d, Dispatched) and d.task.task_id == "c1"
    await store.append("c1", d.epoch, [Event("started", b"{}")])  # claimed, not requeued
    await asyncio.sleep(0.3)
    assert [(r.task_id, r.outcome) for r in await store.reap("heir", 60_000)] == [("c1", "claimed")]
    assert await _index(store, p) == await _running(store, p)
    assert (await _index(store, p))["c1"][0].endswith(":heir")
    await store.cancel("c1")
    assert await _index(store, p) == {}
