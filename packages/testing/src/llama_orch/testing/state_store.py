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
from collections.abc import AsyncIterator
from typing import ClassVar

import msgspec
import pytest
import pytest_asyncio
from llama_orch.core.config import FullPolicy, RateLimit, TenantConfig
from llama_orch.core.errors import AdmissionRejected, ErrorCode
from llama_orch.core.state_memory import MemoryStateStore
from llama_orch.core.state_store import (
    Dispatched,
    DuplicateTask,
    Event,
    Orphaned,
    StateStore,
    TaskSpec,
    load_state_store_class,
)

from ._state_drain_cases import PoolDrainCases
from ._state_log_cases import (
    EventLogAndLeaseCases,
    StoreUnderTest,
    _cfg,
    _end,
    _slots,
    _spec,
)
from ._state_placement_cases import PlacementCases
from ._state_preempt_cases import PreemptionCases
from ._state_replay import replay

__all__ = ["StateStoreConformance", "StoreUnderTest"]


class StateStoreConformance(EventLogAndLeaseCases, PlacementCases, PoolDrainCases, PreemptionCases):
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
        backend as on the memory store built on core.queue/quota/placement; with runs of
        three instances (one never live), requeues and moves, ``preempt`` chooses the
        victim the memory store chooses (ORCH-2607; its run index answers what the scan
        of every task answers: ORCH-2618); with four admitters (one leaving and coming
        back) ``unattended`` lists what the memory store's scan of every queued task
        lists (ORCH-2613)."""
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
        chosen = [x for x in expected if x[0] == "preempt" and x[2] is not None]
        assert {x[1] == x[2].owner for x in chosen} == {True, False}, "preempt chose no own run"
        assert any(x[0] == "requeue" and x[1] != "already" for x in expected)
        listed = {tuple(x[1]) for x in expected if x[0] == "unattended"}
        assert len(listed) > 20, "unattended must change along the replay"
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
            async with asyncio.timeout(30):  # ORCH-2817
                cur = await waiter
            d = await other.dispatch("p", "i", 60_000)
            assert isinstance(d, Dispatched)
            step, cur = await other.dispatch_or_cursor("p", "i", 60_000)
            assert step is None  # the only slot is taken
            assert await other.wait_bell("p", cur, 0.2) == cur  # nothing rang
            waiter = asyncio.create_task(other.wait_bell("p", cur, 30))
            await _end(store, d)
            async with asyncio.timeout(30):  # ORCH-2817
                assert await waiter != cur
            d2 = await other.dispatch("p", "i", 60_000)
            assert isinstance(d2, Dispatched) and d2.task.task_id == "t2"
        finally:
            if other is not store:
                await other.close()

    # ------------------------------------------- fewer round trips (ORCH-2569..2571)
    async def test_submit_dispatch_is_submit_then_dispatch(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2569: ``submit_dispatch`` admits and dispatches the pool's head (whichever
        task that is) in one step, with the answers of ``submit`` then ``dispatch``; the
        doorbell rings only when the task it admitted is left queued. ORCH-2571: the
        dispatch names the seq the owner's first event gets. ORCH-2570: a slot freed
        while nothing is queued rings nothing."""
        await store.configure(_cfg())
        other = await sut.peer(store)
        try:
            await store.set_replicas("p", _slots(1))
            cur = await other.bell("p")
            admitted, step = await store.submit_dispatch(_spec("a"), "i1", 60_000)
            assert admitted.queue_position == 0
            assert isinstance(step, Dispatched) and step.task.task_id == "a"
            assert step.next_seq == 0 and step.replica_id == "r1"
            first = step
            assert await other.wait_bell("p", cur, 0.2) == cur  # nothing left queued
            # the only slot is taken: b is admitted and waits; the others are told
            admitted, step = await store.submit_dispatch(_spec("b"), "i1", 60_000)
            assert admitted.queue_position == 0 and step is None
            cur = await other.wait_bell("p", cur, 30)
            await _end(store, first)
            cur = await other.wait_bell("p", cur, 30)  # freed while b waits: it rings
            # the head, not the task just admitted: b before c; c waits, the bell rings
            admitted, step = await store.submit_dispatch(_spec("c"), "i1", 60_000)
            assert admitted.queue_position == 1
            assert isinstance(step, Dispatched) and step.task.task_id == "b"
            cur = await other.wait_bell("p", cur, 30)
            await _end(store, step)  # c still waits: the freed slot rings
            cur = await other.wait_bell("p", cur, 30)
            d = await other.dispatch("p", "i2", 60_000)
            assert isinstance(d, Dispatched) and d.task.task_id == "c"
            await _end(other, d)  # nothing queued any more: nothing rings
            assert await other.wait_bell("p", cur, 0.2) == cur
            with pytest.raises(DuplicateTask):
                await store.submit_dispatch(_spec("c"), "i1", 60_000)
        finally:
            if other is not store:
                await other.close()

    async def test_a_dispatch_names_the_seq_after_the_stores_own_events(
        self, store: StateStore
    ) -> None:
        """ORCH-2571: events the store appended while the task was queued come before the
        owner's: ``Dispatched.next_seq`` is the seq of the owner's first append."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(0))
        await store.submit(_spec("q"))
        await store.announce_queued([("q", 1000)], 1000)  # one `queued` event at seq 0
        await store.set_replicas("p", _slots(1))
        d = await store.dispatch("p", "i1", 60_000)
        assert isinstance(d, Dispatched) and d.next_seq == 1
        nxt = await store.append("q", d.epoch, [Event("started", b"{}")])
        assert nxt == d.next_seq + 1
