"""The state-store conformance suite (ORCH-2514): one test class every backend runs.

Subclass :class:`StateStoreConformance` and provide a ``store_under_test``
fixture returning a :class:`StoreUnderTest`. Every test opens a fresh namespace,
so backends sharing one server need no cleanup. The order test replays one
seeded operation sequence on the backend and on the ``memory`` reference and
compares every answer, so a backend is held to the core's definitions of
WRR/DRR/EDF, the full policies and placement (ORCH-2504).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec
import pytest
import pytest_asyncio
from llama_orch.core.api import ErrorEvent, QueuedEvent, TokenEvent
from llama_orch.core.config import FullPolicy, Priority, RateLimit, TenantConfig
from llama_orch.core.errors import AdmissionRejected, ErrorCode
from llama_orch.core.state_memory import MemoryStateStore
from llama_orch.core.state_store import (
    Canceled,
    Control,
    Dispatched,
    Event,
    Fenced,
    Orphaned,
    PoolPolicy,
    SlotView,
    StateStore,
    StoreConfig,
    TaskEnded,
    TaskSpec,
    continuation,
    load_state_store_class,
)

from ._state_replay import replay

__all__ = ["StateStoreConformance", "StoreUnderTest"]

LEASE_MS = 200


@dataclass
class StoreUnderTest:
    """``open()``: a started store on a fresh, empty namespace; ``peer(store)``: another
    client on the same namespace (the same object for in-process stores);
    ``advance(s)``: let ``s`` seconds pass on the store's clock."""

    backend: str
    open: Callable[[], Awaitable[StateStore]]
    peer: Callable[[StateStore], Awaitable[StateStore]]
    advance: Callable[[float], Awaitable[None]]


def _spec(tid: str, prio: Priority = "batch", tenant: str = "default", **kw: Any) -> TaskSpec:
    return TaskSpec(task_id=tid, pool="p", priority=prio, tenant=tenant, **kw)


def _cfg(capacity: int = 1000, policy: FullPolicy = "reject", **kw: Any) -> StoreConfig:
    pools = {"p": PoolPolicy(capacity=capacity, full_policy=policy)}
    return StoreConfig(pools=pools, **kw)


def _slots(n: int = 1000, **sets: int) -> list[SlotView]:
    if sets:
        return [
            SlotView(replica_id=r, set_key=r.split("-")[0], ready=True, slots=s)
            for r, s in sets.items()
        ]
    return [SlotView(replica_id="r1", set_key="A", ready=True, slots=n)]


async def _end(store: StateStore, d: Dispatched) -> None:
    await store.append(d.task.task_id, d.epoch, [Event("end", b"{}")])


class StateStoreConformance:
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    @pytest_asyncio.fixture
    async def sut(self, store_under_test: StoreUnderTest) -> StoreUnderTest:
        return store_under_test

    @pytest_asyncio.fixture
    async def store(self, sut: StoreUnderTest) -> AsyncIterator[StateStore]:
        s = await sut.open()
        try:
            yield s
        finally:
            await s.close()

    # ----------------------------------------------------------------- plugin
    async def test_loads_by_entry_point_name(self, sut: StoreUnderTest) -> None:
        """ORCH-2501: the backend is found by its name in ``llama_orch.state_stores``."""
        assert load_state_store_class(sut.backend).backend == sut.backend

    # ----------------------------------------------------------------- fairness
    async def test_fairness_within_ten_percent_of_weights(self, store: StateStore) -> None:
        """ORCH-2504: under backlog, dispatch shares follow WRR (8:1) and DRR (2:1:1)."""
        tenants = {"a": TenantConfig(weight=2), "b": TenantConfig(), "c": TenantConfig()}
        await store.configure(_cfg(tenants=tenants))
        await store.set_replicas("p", _slots(1))
        for n in range(120):
            for t in "abc":
                await store.submit(_spec(f"{t}{n}", "batch", t))
            if n < 100:
                await store.submit(_spec(f"i{n}", "interactive", "a"))
        got: list[TaskSpec] = []
        for _ in range(180):
            d = await store.dispatch("p", "i1", 60_000)
            assert isinstance(d, Dispatched)
            got.append(d.task)
            await _end(store, d)
        prio = Counter(t.priority for t in got[:90])
        assert abs(prio["interactive"] / 90 - 8 / 9) <= 0.10, prio
        batch = [t.tenant for t in got if t.priority == "batch"][:40]
        share = Counter(batch)
        for t, w in (("a", 0.5), ("b", 0.25), ("c", 0.25)):
            assert abs(share[t] / len(batch) - w) <= 0.10, share

    async def test_edf_before_fifo_within_a_flow(self, store: StateStore) -> None:
        """ORCH-2504 (ORCH-1111): deadline tasks first, earliest first; the rest FIFO."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots())
        await store.submit(_spec("f1"))
        await store.submit(_spec("d9", deadline_ms=1_900_000_000_900))
        await store.submit(_spec("f2"))
        await store.submit(_spec("d1", deadline_ms=1_900_000_000_100))
        order = []
        for _ in range(4):
            d = await store.dispatch("p", "i1", 60_000)
            assert isinstance(d, Dispatched)
            order.append(d.task.task_id)
        assert order == ["d1", "d9", "f1", "f2"]

    @pytest.mark.parametrize("seed", [2500, 2599])
    @pytest.mark.parametrize("policy", ["reject", "drop-lru", "shed-low-priority"])
    async def test_same_answers_as_the_memory_reference(
        self, sut: StoreUnderTest, policy: FullPolicy, seed: int
    ) -> None:
        """ORCH-2504: one seeded sequence of submits (priorities, tenants, deadlines, pins,
        a full queue), dispatches, ends and cancels gives the same answers on this
        backend as on the memory store built on core.queue/quota/placement."""
        expected = await replay(MemoryStateStore(clock=lambda: 0.0), policy, seed)
        store = await sut.open()
        try:
            got = await replay(store, policy, seed)
        finally:
            await store.close()
        assert sum(1 for x in expected if x[0] == "run") > 50, "the trace must exercise dispatch"
        assert sum(1 for x in expected if x[0] == "admit" and x[2]) or policy == "reject"
        assert any(x[0] == "dispatch" and x[1] for x in expected), "no pinned head was orphaned"
        assert ("reject", "quota") in expected, "max_concurrent never refused"
        assert got == expected

    async def test_concurrent_clients_keep_the_global_order(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2504: dispatches racing from four clients, ordered by the epochs the
        store handed out, are exactly the memory reference's serving order."""
        rng = random.Random(2504)
        tenants = {"a": TenantConfig(weight=3), "b": TenantConfig(weight=2)}
        specs = [
            _spec(f"t{n}", rng.choice(["interactive", "batch"]), rng.choice("abc"))
            for n in range(80)
        ]
        ref = MemoryStateStore(clock=lambda: 0.0)
        for s in (ref, store):
            await s.configure(_cfg(tenants=tenants))
            await s.set_replicas("p", _slots())
            for spec in specs:
                await s.submit(spec)
        expected = []
        for _ in specs:
            d = await ref.dispatch("p", "ref", 60_000)
            assert isinstance(d, Dispatched)
            expected.append(d.task.task_id)
        clients = [store] + [await sut.peer(store) for _ in range(3)]

        async def drain(c: StateStore) -> list[tuple[int, str]]:
            got = []
            for _ in range(len(specs) // len(clients)):
                d = await c.dispatch("p", f"c{id(c)}", 60_000)
                assert isinstance(d, Dispatched)
                got.append((d.epoch, d.task.task_id))
            return got

        try:
            runs = await asyncio.gather(*(drain(c) for c in clients))
        finally:
            for c in clients[1:]:
                if c is not store:
                    await c.close()
        assert [tid for _, tid in sorted(x for run in runs for x in run)] == expected

    # ----------------------------------------------------------------- full policies
    async def test_reject_refuses_the_newcomer(self, store: StateStore) -> None:
        """ORCH-2504 (ORCH-1102)."""
        await store.configure(_cfg(2, "reject"))
        await store.submit(_spec("a"))
        await store.submit(_spec("b"))
        with pytest.raises(AdmissionRejected) as info:
            await store.submit(_spec("c", "interactive"))
        assert info.value.policy_label == "reject"
        assert await store.task("c") is None

    async def test_drop_lru_displaces_oldest_with_one_terminal(self, store: StateStore) -> None:
        """ORCH-2506 (ORCH-1103): the displaced task ends in the same step, exactly once."""
        await store.configure(_cfg(2, "drop-lru"))
        await store.submit(_spec("i-old", "interactive"))
        await store.submit(_spec("b-old"))
        got = await store.submit(_spec("b-new"))
        assert got.displaced == [("b-old", ErrorCode.QUEUE_FULL_DROP_LRU)]
        got = await store.submit(_spec("i-new", "interactive"))
        assert got.displaced == [("i-old", ErrorCode.QUEUE_FULL_DROP_LRU)]
        log = await store.read("b-old")
        assert [e.kind for e in log] == ["error"]
        assert msgspec.json.decode(log[0].data)["code"] == "QUEUE_FULL_DROP_LRU"

    async def test_shed_low_priority_displaces_newest_lower(self, store: StateStore) -> None:
        """ORCH-2506 (ORCH-1104)."""
        await store.configure(_cfg(2, "shed-low-priority"))
        await store.submit(_spec("b1"))
        await store.submit(_spec("b2"))
        got = await store.submit(_spec("i1", "interactive"))
        assert got.displaced == [("b2", ErrorCode.ADMISSION_REJECT)]
        with pytest.raises(AdmissionRejected):
            await store.submit(_spec("b3"))
        assert [e.kind for e in await store.read("b2")] == ["error"]

    # ----------------------------------------------------------------- quotas
    async def test_max_concurrent_counts_queued_and_running(self, store: StateStore) -> None:
        """ORCH-2505: queued + running per tenant; freed by the terminal event."""
        await store.configure(_cfg(tenants={"t": TenantConfig(max_concurrent=2)}))
        await store.set_replicas("p", _slots())
        await store.submit(_spec("t1", tenant="t"))
        await store.submit(_spec("t2", tenant="t"))
        with pytest.raises(AdmissionRejected) as info:
            await store.submit(_spec("t3", tenant="t"))
        assert info.value.policy_label == "quota" and info.value.retry_after_ms is None
        d = await store.dispatch("p", "i1", 60_000)
        assert isinstance(d, Dispatched)
        await _end(store, d)
        await store.submit(_spec("t3", tenant="t"))

    async def test_token_buckets_on_the_store_clock(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2505: tenant and priority buckets; the refusal says when to retry."""
        await store.configure(
            _cfg(
                tenants={
                    "slow": TenantConfig(rps=0.1, burst=2),
                    "fast": TenantConfig(rps=4, burst=1),
                },
                priorities={"interactive": RateLimit(rps=0.1, burst=1)},
            )
        )
        await store.submit(_spec("s1", tenant="slow"))
        await store.submit(_spec("s2", tenant="slow"))
        with pytest.raises(AdmissionRejected) as info:
            await store.submit(_spec("s3", tenant="slow"))
        assert info.value.policy_label == "quota"
        assert info.value.retry_after_ms is not None and 5000 < info.value.retry_after_ms <= 10_000
        await store.submit(_spec("i1", "interactive"))
        with pytest.raises(AdmissionRejected):
            await store.submit(_spec("i2", "interactive", "other"))
        started = time.monotonic()
        await store.submit(_spec("f1", tenant="fast"))
        try:
            await store.submit(_spec("f2", tenant="fast"))
            # Only legitimate when a refill (250 ms) really passed between the two calls.
            assert time.monotonic() - started >= 0.25, "a second request within one refill passed"
        except AdmissionRejected as exc:
            assert exc.retry_after_ms is not None and exc.retry_after_ms <= 250
            await sut.advance(exc.retry_after_ms / 1000 + 0.05)
            await store.submit(_spec("f2", tenant="fast"))

    async def test_quotas_are_global_across_clients(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2505: one bucket (burst 3) and one max_concurrent (5) for every client:
        twelve racing submits from four clients get exactly three accepted."""
        await store.configure(
            _cfg(
                tenants={"q": TenantConfig(rps=0.01, burst=3), "m": TenantConfig(max_concurrent=5)}
            )
        )
        clients = [store] + [await sut.peer(store) for _ in range(3)]

        async def burst(c: StateStore, k: int, tenant: str) -> int:
            ok = 0
            for n in range(3):
                try:
                    await c.submit(_spec(f"{tenant}{k}-{n}", tenant=tenant))
                    ok += 1
                except AdmissionRejected as exc:
                    assert exc.policy_label == "quota"
            return ok

        try:
            q = await asyncio.gather(*(burst(c, k, "q") for k, c in enumerate(clients)))
            m = await asyncio.gather(*(burst(c, k, "m") for k, c in enumerate(clients)))
        finally:
            for c in clients[1:]:
                if c is not store:
                    await c.close()
        assert sum(q) == 3, q
        assert sum(m) == 5, m

    # ----------------------------------------------------------------- placement
    async def test_slots_never_oversubscribed_across_clients(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2507: concurrent dispatchers on several clients share the slots exactly."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(**{"A-1": 2, "A-2": 2}))
        for n in range(20):
            await store.submit(_spec(f"t{n}"))
        clients = [store] + [await sut.peer(store) for _ in range(3)]
        try:
            got = await asyncio.gather(
                *(c.dispatch("p", f"i{n}", 60_000) for n, c in enumerate(clients * 2))
            )
        finally:
            for c in clients[1:]:
                if c is not store:
                    await c.close()
        won = [d for d in got if isinstance(d, Dispatched)]
        assert len(won) == 4 and len({d.task.task_id for d in won}) == 4
        assert await store.busy("p") == {"A-1": 2, "A-2": 2}

    async def test_pinned_head_waits_and_orphans(self, store: StateStore) -> None:
        """ORCH-2507 (ORCH-1116): a pinned head blocks while its set is full and is
        ended with POOL_UNAVAILABLE when its set is gone."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(**{"A-1": 1, "B-1": 1}))
        first = await store.dispatch("p", "i1", 60_000)
        assert first is None
        await store.submit(_spec("b1", pin="B"))
        await store.submit(_spec("b2", pin="B"))
        await store.submit(_spec("free"))
        d = await store.dispatch("p", "i1", 60_000)
        assert isinstance(d, Dispatched) and d.replica_id == "B-1"
        assert await store.dispatch("p", "i1", 60_000) is None  # b2 waits for B, head of line
        await store.set_replicas("p", _slots(**{"A-1": 1}))
        o = await store.dispatch("p", "i1", 60_000)
        assert isinstance(o, Orphaned) and o.task_id == "b2"
        assert msgspec.json.decode((await store.read("b2"))[-1].data)["code"] == "POOL_UNAVAILABLE"
        d2 = await store.dispatch("p", "i1", 60_000)
        assert isinstance(d2, Dispatched) and d2.task.task_id == "free"

    async def test_session_turns_follow_the_first_turn(self, store: StateStore) -> None:
        """ORCH-2512: later turns of a session are pinned to its set, warm replica first."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(**{"A-1": 1, "A-2": 1, "B-1": 3}))
        await store.submit(_spec("s1", session="chat"))
        d = await store.dispatch("p", "i1", 60_000)
        assert isinstance(d, Dispatched) and d.set_key == "B"
        assert await store.session_pin("chat") == ("B", d.replica_id)
        await _end(store, d)
        await store.set_replicas("p", _slots(**{"A-1": 4, "A-2": 4, "B-1": 3}))
        await store.submit(_spec("s2", session="chat"))
        d2 = await store.dispatch("p", "i1", 60_000)
        assert isinstance(d2, Dispatched) and d2.replica_id == "B-1"

    async def test_doorbell_wakes_a_waiting_dispatcher(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2518: a dispatcher on another client waits on the pool's doorbell and is
        woken by a submit and by a freed slot; with nothing new it times out. ORCH-2565:
        the cursor a placement-less ``dispatch_or_cursor`` answers works the same."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(1))
        other = await sut.peer(store)
        try:
            cur = await other.bell("p")
            assert await other.dispatch("p", "i", 60_000) is None
            waiter = asyncio.create_task(other.wait_bell("p", cur, 30))
            await store.submit(_spec("t1"))
            await store.submit(_spec("t2"))
            cur = await asyncio.wait_for(waiter, 30)
            d = await other.dispatch("p", "i", 60_000)
            assert isinstance(d, Dispatched)
            step, cur = await other.dispatch_or_cursor("p", "i", 60_000)
            assert step is None  # the only slot is taken
            assert await other.wait_bell("p", cur, 0.2) == cur  # nothing rang
            waiter = asyncio.create_task(other.wait_bell("p", cur, 30))
            await _end(store, d)
            assert await asyncio.wait_for(waiter, 30) != cur
            d2 = await other.dispatch("p", "i", 60_000)
            assert isinstance(d2, Dispatched) and d2.task.task_id == "t2"
        finally:
            if other is not store:
                await other.close()

    # ----------------------------------------------------------------- event log
    async def test_append_many_answers_each_batch_on_its_own(self, store: StateStore) -> None:
        """ORCH-2565: several tasks' batches in one call: each is fenced, ended or
        logged as one ``append`` would be, and a refused one changes nothing else."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots())
        for tid in ("a", "b", "c"):
            await store.submit(_spec(tid))
        da, db, dc = [await store.dispatch("p", "i1", 60_000) for _ in range(3)]
        assert isinstance(da, Dispatched) and isinstance(db, Dispatched)
        assert isinstance(dc, Dispatched)
        await _end(store, dc)
        got = await store.append_many(
            [
                ("a", da.epoch, [Event("started", b"{}"), _token("x", 0)]),
                ("b", db.epoch + 99, [_token("stale", 0)]),
                ("c", dc.epoch, [_token("late", 0)]),
                ("zz", 1, [_token("nobody", 0)]),
                ("b", db.epoch, [Event("started", b"{}"), Event("end", b"{}")]),
                ("a", da.epoch, [_token("y", 1)]),
            ]
        )
        assert got[0] == 2 and got[4] == 2 and got[5] == 3
        assert isinstance(got[1], Fenced) and isinstance(got[2], TaskEnded)
        assert isinstance(got[3], KeyError)
        assert [e.kind for e in await store.read("a")] == ["started", "token", "token"]
        assert [e.kind for e in await store.read("b")] == ["started", "end"]
        assert [e.kind for e in await store.read("c")] == ["end"]

    async def test_exactly_one_terminal_and_resume(self, store: StateStore) -> None:
        """ORCH-2508: contiguous ids, one terminal, read after an id, tail to the end."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots())
        await store.submit(_spec("t"))
        d = await store.dispatch("p", "i1", 60_000)
        assert isinstance(d, Dispatched)
        nxt = await store.append("t", d.epoch, [Event("started", b"{}"), Event("token", b"a")])
        assert nxt == 2
        tail = asyncio.create_task(_collect(store.tail("t", 0)))
        await store.append("t", d.epoch, [Event("token", b"b")])
        await store.append("t", d.epoch, [Event("token", b"c"), Event("end", b"{}")])
        with pytest.raises(TaskEnded):
            await store.append("t", d.epoch, [Event("end", b"{}")])
        assert await store.cancel("t") == "ended"
        log = await store.read("t")
        assert [e.seq for e in log] == [0, 1, 2, 3, 4]
        assert [e.kind for e in log].count("end") == 1 and log[-1].kind == "end"
        assert [e.seq for e in await store.read("t", after=2)] == [3, 4]
        got = await asyncio.wait_for(tail, 30)
        assert [e.seq for e in got] == [1, 2, 3, 4]
        assert await store.busy("p") == {}

    async def test_no_token_after_cancel(self, store: StateStore, sut: StoreUnderTest) -> None:
        """ORCH-2510: cancel on another client ends the task atomically; the owner's
        next token is refused and the slot is free."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(1))
        await store.submit(_spec("t"))
        await store.submit(_spec("q"))
        d = await store.dispatch("p", "owner", 60_000)
        assert isinstance(d, Dispatched)
        await store.append("t", d.epoch, [Event("started", b"{}"), Event("token", b"a")])
        other = await sut.peer(store)
        try:
            assert await other.cancel("t") == "running"
            assert await other.cancel("q") == "queued"
        finally:
            if other is not store:
                await other.close()
        with pytest.raises(Canceled):
            await store.append("t", d.epoch, [Event("token", b"b")])
        log = await store.read("t")
        assert [e.kind for e in log] == ["started", "token", "end"]
        assert msgspec.json.decode(log[-1].data)["reason"] == "canceled"
        # the end counts the tokens streamed before it (found by the chaos store profile,
        # ORCH-6113: it said 0 after 21 tokens)
        assert msgspec.json.decode(log[-1].data)["tokens_out"] == 1
        assert [e.kind for e in await store.read("q")] == ["end"]
        assert await store.busy("p") == {}
        assert await store.dispatch("p", "owner", 60_000) is None

    async def test_cancel_reaches_the_owner_on_its_control_channel(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2540: a cancel on another client of a running task puts one
        ``Control("cancel", id)`` on the owner's channel in the same step, waking a
        waiting owner; a queued task's cancel and other instances' channels get none."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(1))
        await store.submit(_spec("t"))
        await store.submit(_spec("q"))
        cur = await store.control_cursor("owner")
        quiet = await store.control_cursor("bystander")
        d = await store.dispatch("p", "owner", 60_000)
        assert isinstance(d, Dispatched)
        waiter = asyncio.create_task(store.wait_control("owner", cur, 30))
        await asyncio.sleep(0)  # let it block
        other = await sut.peer(store)
        try:
            assert await other.cancel("q") == "queued"
            assert await other.cancel("t") == "running"
            assert await other.cancel("t") == "ended"  # a second cancel sends nothing
        finally:
            if other is not store:
                await other.close()
        cur2, got = await asyncio.wait_for(waiter, 30)
        assert got == [Control("cancel", "t")] and cur2 != cur
        assert await store.wait_control("owner", cur2, 0.2) == (cur2, [])
        assert await store.wait_control("bystander", quiet, 0.2) == (quiet, [])

    async def test_heartbeats_list_the_live_instances(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2543: an instance is listed while its heartbeat's ttl runs, then not."""
        await store.configure(_cfg())
        await store.heartbeat("i-b", 60_000)
        await store.heartbeat("i-a", LEASE_MS)
        live = await store.instances()
        assert [v.instance_id for v in live] == ["i-a", "i-b"]
        assert 0 < live[0].expires_in_ms <= LEASE_MS < live[1].expires_in_ms <= 60_000
        await sut.advance(LEASE_MS / 1000 + 0.2)
        assert [v.instance_id for v in await store.instances()] == ["i-b"]
        await store.heartbeat("i-b", 0)  # a shutdown leaves the list at once
        assert await store.instances() == []

    # ----------------------------------------------------------------- waiting tasks
    async def test_queued_events_positions_and_bounded_waits(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2560, ORCH-2561, ORCH-2562: any client learns a queued task's exact
        position; `queued` events are appended without an epoch, at most one per
        interval whoever announces, never after the dispatch; a bounded wait ends only
        a queued task; a dispatched task with only `queued` events is still requeued
        by the reaper."""
        peer = await sut.peer(store)
        try:
            await store.configure(_cfg())
            await store.set_replicas("p", _slots(1))
            for tid, tenant in (("a", "x"), ("b", "y"), ("c", "y")):
                await store.submit(_spec(tid, tenant=tenant))
            assert await peer.positions(["c", "b", "zz"]) == {"b": 1, "c": 2}
            assert await store.announce_queued([("b", 1000), ("c", 2000)], 300) == {
                "b": 1,
                "c": 2,
            }
            # another instance announcing within the interval writes nothing
            assert await peer.announce_queued([("b", 9000)], 300) == {"b": 1}
            qd = msgspec.json.Decoder(QueuedEvent)
            (ev,) = await store.read("b")
            assert ev.kind == "queued" and qd.decode(ev.data) == QueuedEvent(
                queue_position=1, predicted_start_ms=1000
            )
            await sut.advance(0.35)
            await peer.announce_queued([("b", 1100)], 300)  # unchanged: no event
            assert len(await store.read("b")) == 1
            assert await store.cancel("a") == "queued"
            await peer.announce_queued([("b", 1100)], 300)  # moved up: one event
            assert [qd.decode(e.data).queue_position for e in await store.read("b")] == [1, 0]
            d = await store.dispatch("p", "i1", LEASE_MS)
            assert isinstance(d, Dispatched) and d.task.task_id == "b"
            await sut.advance(0.35)
            assert await store.announce_queued([("b", 0), ("c", 0)], 300) == {"c": 0}
            assert len(await store.read("b")) == 2  # nothing after the dispatch
            # the dispatched task's instance died before its first event: requeued
            await sut.advance(LEASE_MS / 1000 + 0.2)
            reaped = await peer.reap("heir", LEASE_MS)
            assert [(r.task_id, r.outcome) for r in reaped] == [("b", "requeued")]
            assert await store.positions(["b", "c"]) == {"b": 0, "c": 1}
            d = await store.dispatch("p", "i1", 60_000)
            assert isinstance(d, Dispatched) and d.task.task_id == "b"
            expired = Event(
                "error",
                msgspec.json.encode(
                    ErrorEvent(code=ErrorCode.ADMISSION_REJECT, message="ttl", retriable=True)
                ),
            )
            assert not await peer.expire("b", expired)  # running: untouched
            assert await peer.expire("c", expired)
            assert not await store.expire("c", expired)  # one terminal only
            assert [e.kind for e in await store.read("c")][-1] == "error"
            assert await store.positions(["c"]) == {}
            view = await store.task("b")
            assert view is not None and view.state == "running"
        finally:
            if peer is not store:
                await peer.close()

    # ----------------------------------------------------------------- leases, fencing
    async def test_lease_expiry_requeues_a_task_without_events(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2511: dispatched, no event, lease expired → front of its queue, slot freed;
        the old owner is fenced."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(1))
        await store.submit(_spec("t1"))
        await store.submit(_spec("t2"))
        long = await store.dispatch("p", "slow", 60_000)
        assert isinstance(long, Dispatched)
        assert await store.reap("alive", LEASE_MS) == []  # a live lease is never reaped
        await store.requeue("t1", long.epoch)
        d = await store.dispatch("p", "dead", LEASE_MS)
        assert isinstance(d, Dispatched) and d.task.task_id == "t1"
        await sut.advance(LEASE_MS / 1000 + 0.2)
        reaped = await store.reap("alive", LEASE_MS)
        assert [(r.task_id, r.outcome) for r in reaped] == [("t1", "requeued")]
        assert await store.busy("p") == {}
        with pytest.raises(Fenced):
            await store.append("t1", d.epoch, [Event("started", b"{}")])
        assert await store.renew("dead", {"t1": d.epoch}, LEASE_MS) == ["t1"]
        again = await store.dispatch("p", "alive", 60_000)
        assert isinstance(again, Dispatched) and again.task.task_id == "t1"
        assert again.requeues == 2 and again.epoch > d.epoch

    async def test_lease_expiry_mid_stream_is_claimed_for_continuation(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2511, ORCH-2509: a streaming task is handed to the reaper under a new
        epoch with its log so far; the stale owner can never append again."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(1))
        await store.submit(_spec("t", request=b"prompt"))
        d = await store.dispatch("p", "zombie", LEASE_MS)
        assert isinstance(d, Dispatched)
        started = [Event("started", b"{}"), _token("Hel", 0), _token("lo", 1)]
        await store.append("t", d.epoch, started)
        assert await store.renew("zombie", {"t": d.epoch}, LEASE_MS) == []
        await sut.advance(LEASE_MS / 1000 + 0.2)
        (r,) = await store.reap("heir", LEASE_MS)
        assert (r.outcome, r.next_seq, r.task.request) == ("claimed", 3, b"prompt")
        assert r.replica_id == "r1" and r.epoch > d.epoch
        assert continuation(await store.read("t")) == ("Hello", 2, True)
        with pytest.raises(Fenced):
            await store.append("t", d.epoch, [_token("zombie", 2)])
        assert await store.append("t", r.epoch, [_token("!", 2), Event("end", b"{}")]) == 5
        assert continuation(await store.read("t")) == ("Hello!", 3, True)
        assert await store.busy("p") == {}
        view = await store.task("t")
        assert view is not None and view.state == "ended" and view.owner == "heir"

    async def test_requeue_gives_the_task_back_in_front(self, store: StateStore) -> None:
        """ORCH-2511 (ORCH-1908): the owner puts a task back ahead of its flow; fenced after."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(1))
        await store.submit(_spec("t1"))
        await store.submit(_spec("t2"))
        d = await store.dispatch("p", "i1", 60_000)
        assert isinstance(d, Dispatched)
        await store.requeue("t1", d.epoch)
        with pytest.raises(Fenced):
            await store.requeue("t1", d.epoch)
        d2 = await store.dispatch("p", "i1", 60_000)
        assert isinstance(d2, Dispatched) and d2.task.task_id == "t1"

    async def test_ended_task_is_forgotten_after_retention(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2517: the log and the record expire after the retention window."""
        await store.configure(_cfg(event_log_retention_ms=200))
        await store.submit(_spec("t"))
        await store.cancel("t")
        assert await store.task("t") is not None
        await sut.advance(0.5)
        await store.submit(_spec("u"))  # any operation lets the memory store purge
        assert await store.task("t") is None
        with pytest.raises(KeyError):
            await store.read("t")


def _token(t: str, i: int) -> Event:
    return Event("token", msgspec.json.encode(TokenEvent(t, i)))


async def _collect(it: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in it]
