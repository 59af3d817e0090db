"""The index of queued tasks by admitter ``llorch_unattended`` reads (ORCH-2612,
ORCH-2613), read directly on a real valkey-server: after a seeded replay it holds
exactly the queued tasks, each under its pool and admitting instance, and
``unattended`` answers what the scan of every queued task's record answers (the
library before the index); a withdrawn queued admission (ORCH-2551) leaves it;
``configure`` rebuilds it from the queue; once every task ended no task is left in it;
``submit_dispatch`` indexes only a task it leaves queued (ORCH-2616)."""

from __future__ import annotations

import pytest
from llama_orch.core.state_store import Dispatched, Orphaned, PoolPolicy, StoreConfig, TaskSpec
from llama_orch.state_valkey import ValkeyStateStore
from llama_orch.testing._state_log_cases import _slots
from llama_orch.testing._state_replay import replay

pytestmark = pytest.mark.asyncio


async def _index(store: ValkeyStateStore, p: str) -> dict[str, str]:
    """task -> its index key without the prefix, over every index key."""
    out: dict[str, str] = {}
    async for key in store.client.scan_iter(match=f"{p}qa:*", count=1000):
        for tid in await store.client.smembers(key):
            assert tid.decode() not in out, f"{tid!r} is in two index keys"
            out[tid.decode()] = key.decode()[len(p) :]
    return out


async def _queued(store: ValkeyStateStore, p: str) -> dict[str, str]:
    """What the index must hold: every task of the pool's bands, by its own record."""
    out: dict[str, str] = {}
    async for key in store.client.scan_iter(match=f"{p}arr:*", count=1000):
        pool = key.decode()[len(p) :].split(":")[1]
        for tid in await store.client.zrange(key, 0, -1):
            state, adm = await store.client.hmget(f"{p}t:{tid.decode()}", "state", "adm")
            assert state == b"queued", (tid, state)
            out[tid.decode()] = f"qa:{pool}:{(adm or b'').decode()}"
    return out


async def _scan(store: ValkeyStateStore, p: str, pool: str) -> list[str]:
    """The answer of the library before the index: every queued task's admitter read,
    listed when none or not live (its heartbeat at or before the store's clock)."""
    secs, micros = await store.client.time()
    now_ms = secs * 1000 + micros // 1000
    out = []
    for tid, key in (await _queued(store, p)).items():
        adm = key.split(":", 2)[2]
        score = await store.client.zscore(f"{p}inst", adm) if adm else None
        if not adm or score is None or score <= now_ms:
            out.append(tid)
    return sorted(out)


@pytest.mark.parametrize("policy", ["reject", "drop-lru", "shed-low-priority"])
async def test_the_index_holds_exactly_the_queued_tasks(
    prefixed_store: tuple[ValkeyStateStore, str], policy: str
) -> None:
    store, p = prefixed_store
    await replay(store, policy, 2500)  # type: ignore[arg-type]
    queued = await _queued(store, p)
    assert len(queued) >= 3, "the replay must leave queued tasks"
    assert len(set(queued.values())) >= 3, "and of several admitters"
    assert await _index(store, p) == queued
    got = await store.unattended("p")
    assert got == await _scan(store, p, "p") and got
    await store.heartbeat("i", 0)  # i leaves: its tasks are listed too
    assert await store.unattended("p") == await _scan(store, p, "p")
    for tid in queued:
        await store.cancel(tid)
    assert await _index(store, p) == {}
    assert [k async for k in store.client.scan_iter(match=f"{p}qa:*")] == []
    assert await store.unattended("p") == []
    live = {m.decode() for m in await store.client.smembers(f"{p}qadm:p")}
    assert live == {"j"}, "only a live admitter is kept, the others pruned"


async def test_a_withdrawn_queued_task_leaves_the_index(
    prefixed_store: tuple[ValkeyStateStore, str],
) -> None:
    store, p = prefixed_store
    await replay(store, "reject", 2599)
    queued = await _queued(store, p)
    tid = sorted(queued)[0]
    got = await store.client.fcall("llorch_withdraw", 1, p, tid)  # type: ignore[misc]
    assert got == [b"OK", b"queued"]
    del queued[tid]
    assert await _index(store, p) == queued
    assert tid not in await store.unattended("p")


async def test_configure_rebuilds_the_index(prefixed_store: tuple[ValkeyStateStore, str]) -> None:
    """Tasks queued under the library before the index (no index keys) are indexed by
    the next ``configure``, as every instance's start makes one; a stale member is
    dropped."""
    store, p = prefixed_store
    await replay(store, "drop-lru", 2599)
    queued = await _queued(store, p)
    assert queued
    keys = [k async for k in store.client.scan_iter(match=f"{p}qa:*")]
    await store.client.delete(*keys, f"{p}qadm:p")
    await store.client.sadd(f"{p}qa:p:k", "stale")
    await store.client.sadd(f"{p}qadm:p", "k")
    assert await store.unattended("p") == ["stale"]
    raw = await store.client.get(f"{p}cfg")  # the rules of the replay, configured again
    await store.client.fcall("llorch_configure", 1, p, raw)  # type: ignore[misc]
    assert await _index(store, p) == queued
    assert await store.unattended("p") == await _scan(store, p, "p")


async def test_submit_dispatch_indexes_only_a_task_it_leaves_queued(
    prefixed_store: tuple[ValkeyStateStore, str],
) -> None:
    """ORCH-2616: a task ``submit_dispatch`` starts at once (or ends, orphaned) never
    enters the index, so its admitter is not added to ``qadm:<pool>`` either; a task it
    leaves queued (no free slot, or another task was the head) is indexed as ``submit``
    indexes it, and ``unattended`` answers as the scan does."""
    store, p = prefixed_store
    pools = {"p": PoolPolicy(capacity=8, full_policy="reject")}
    await store.configure(StoreConfig(pools=pools))
    await store.set_replicas("p", _slots(**{"A-1": 2}))
    await store.heartbeat("i", 600_000)

    def spec(tid: str, pin: str | None = None) -> TaskSpec:
        return TaskSpec(task_id=tid, pool="p", priority="interactive", tenant="a", pin=pin)

    for tid in ("t0", "t1"):  # two free slots: each starts at once
        _, d = await store.submit_dispatch(spec(tid), "i", 60_000)
        assert isinstance(d, Dispatched) and d.task.task_id == tid
    _, d = await store.submit_dispatch(spec("gone", pin="B"), "i", 60_000)
    assert d == Orphaned(task_id="gone")  # pinned to a set with no replica: ended
    assert await _index(store, p) == {}
    assert list(await store.client.smembers(f"{p}qadm:p")) == []
    _, d = await store.submit_dispatch(spec("t2"), "i", 60_000)  # no free slot
    assert d is None
    await store.submit(spec("t3"), "k")  # queued behind t2 by an admitter never live
    assert (
        await _index(store, p)
        == await _queued(store, p)
        == {
            "t2": "qa:p:i",
            "t3": "qa:p:k",
        }
    )
    assert {m.decode() for m in await store.client.smembers(f"{p}qadm:p")} == {"i", "k"}
    assert await store.unattended("p") == ["t3"] == await _scan(store, p, "p")
    ended = await store.cancel("t0")
    assert ended
    # a slot is free again: the head t2 starts, the task just admitted stays queued
    _, d = await store.submit_dispatch(spec("t4"), "i", 60_000)
    assert isinstance(d, Dispatched) and d.task.task_id == "t2"
    assert (
        await _index(store, p)
        == await _queued(store, p)
        == {
            "t3": "qa:p:k",
            "t4": "qa:p:i",
        }
    )
    await store.heartbeat("i", 0)  # i leaves: its queued task is listed too
    assert await store.unattended("p") == ["t3", "t4"] == await _scan(store, p, "p")
