"""The index of queued tasks by admitter ``llorch_unattended`` reads (ORCH-2612,
ORCH-2613), read directly on a real valkey-server: after a seeded replay it holds
exactly the queued tasks, each under its pool and admitting instance, and
``unattended`` answers what the scan of every queued task's record answers (the
library before the index); a withdrawn queued admission (ORCH-2551) leaves it;
``configure`` rebuilds it from the queue; once every task ended no task is left in it."""

from __future__ import annotations

import itertools

import pytest
from llama_orch.state_valkey import ValkeyStateStore
from llama_orch.testing._state_replay import replay

pytestmark = pytest.mark.asyncio

_namespaces = itertools.count()


async def _store(url: str) -> tuple[ValkeyStateStore, str]:
    name = f"qi{next(_namespaces)}"
    store = ValkeyStateStore(url, key_prefix=name)
    await store.start()
    return store, f"{{{name}}}:"


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
async def test_the_index_holds_exactly_the_queued_tasks(valkey_url: str, policy: str) -> None:
    store, p = await _store(valkey_url)
    try:
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
    finally:
        await store.close()


async def test_a_withdrawn_queued_task_leaves_the_index(valkey_url: str) -> None:
    store, p = await _store(valkey_url)
    try:
        await replay(store, "reject", 2599)
        queued = await _queued(store, p)
        tid = sorted(queued)[0]
        got = await store.client.fcall("llorch_withdraw", 1, p, tid)  # type: ignore[misc]
        assert got == [b"OK", b"queued"]
        del queued[tid]
        assert await _index(store, p) == queued
        assert tid not in await store.unattended("p")
    finally:
        await store.close()


async def test_configure_rebuilds_the_index(valkey_url: str) -> None:
    """Tasks queued under the library before the index (no index keys) are indexed by
    the next ``configure``, as every instance's start makes one; a stale member is
    dropped."""
    store, p = await _store(valkey_url)
    try:
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
    finally:
        await store.close()
