"""Conformance cases of pool drains at the store (ORCH-2585..2587, ORCH-2591, ORCH-2609)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from llama_orch.core.api import ErrorEvent
from llama_orch.core.config import TenantConfig
from llama_orch.core.errors import ErrorCode, PoolUnavailable
from llama_orch.core.state_store import (
    Control,
    Dispatched,
    Event,
    Orphaned,
    PoolDrain,
    PoolPolicy,
    StateStore,
    StoreConfig,
    TaskEnded,
    TaskSpec,
)

from ._state_log_cases import StoreUnderTest, _cfg, _end, _running, _slots, _spec

__all__ = ["PoolDrainCases"]


def _drained() -> Event:
    return Event(
        "error",
        msgspec.json.encode(
            ErrorEvent(code=ErrorCode.POOL_UNAVAILABLE, message="drained", retriable=True)
        ),
    )


class PoolDrainCases:
    """Cases of a drain recorded at the store and seen by every instance."""

    async def test_a_drained_pool_refuses_and_places_nothing(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2586: after ``drain_pool`` no client admits a task of the pool (the
        refusal of ORCH-1604, before any quota is charged) and no dispatch starts one;
        ``undrain_pool`` opens both again. A second drain keeps the first deadline."""
        d = await _running(store, "run", "wait", slots=1)
        assert d.task.task_id == "run"
        # tenant b may admit one task in the whole test: a refusal must not spend it
        await store.configure(_cfg(tenants={"b": TenantConfig(rps=0.0001, burst=1)}))
        first = await store.drain_pool("p", 5_000)
        assert first.pool == "p" and 4_000 < first.deadline_in_ms <= 5_000
        again = await store.drain_pool("p", 60_000)  # keeps the first deadline
        assert again.deadline_in_ms <= first.deadline_in_ms
        other = await sut.peer(store)
        try:
            with pytest.raises(PoolUnavailable, match="pool p is draining"):
                await other.submit(_spec("late", "batch", "b"))
            with pytest.raises(PoolUnavailable, match="pool p is draining"):
                await other.submit_dispatch(_spec("late2"), "i2", 60_000)
            assert await other.task("late") is None  # nothing recorded
            await _end(store, d)  # a slot frees while the pool is drained
            assert await other.dispatch("p", "i2", 60_000) is None
            assert await other.positions(["wait"]) == {"wait": 0}  # still queued
            (seen,) = await other.drains()  # the same drain, its time left going down
            assert seen.pool == "p" and seen.deadline_in_ms <= first.deadline_in_ms
            assert await other.undrain_pool("p") is True
            assert await other.undrain_pool("p") is False
            assert await store.drains() == []
            step = await store.dispatch("p", "i1", 60_000)
            assert isinstance(step, Dispatched) and step.task.task_id == "wait"
            assert (await other.submit(_spec("after", "batch", "b"))).queue_position == 0
        finally:
            if other is not store:
                await other.close()

    async def test_a_drain_reaches_every_live_instance(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2585: the drain's step puts ``Control("drain")`` on the channel of every
        live instance (heartbeat not expired), once; the undrain ``Control("undrain")``;
        an instance whose heartbeat expired gets nothing (it reads ``drains()``)."""
        await store.configure(_cfg())
        await store.heartbeat("i-a", 60_000)
        await store.heartbeat("i-b", 60_000)
        await store.heartbeat("i-gone", 0)
        cursors = {i: await store.control_cursor(i) for i in ("i-a", "i-b", "i-gone")}
        waiter = asyncio.create_task(store.wait_control("i-a", cursors["i-a"], 30))
        await asyncio.sleep(0)  # let it block
        other = await sut.peer(store)
        try:
            await other.drain_pool("p", 1_000)
            await other.drain_pool("p", 1_000)  # already drained: nothing sent
        finally:
            if other is not store:
                await other.close()
        async with asyncio.timeout(30):  # ORCH-2817
            cur_a, got = await waiter
        assert got == [Control("drain", "", "p")]
        cur_b, got_b = await store.wait_control("i-b", cursors["i-b"], 1)
        assert got_b == [Control("drain", "", "p")]
        assert await store.wait_control("i-gone", cursors["i-gone"], 0.2) == (
            cursors["i-gone"],
            [],
        )
        await sut.advance(1.5)
        assert await store.drains() == [PoolDrain(pool="p", deadline_in_ms=0)]
        assert await store.undrain_pool("p")
        assert (await store.wait_control("i-a", cur_a, 1))[1] == [Control("undrain", "", "p")]
        assert (await store.wait_control("i-b", cur_b, 1))[1] == [Control("undrain", "", "p")]

    async def test_queued_lists_the_pools_queued_tasks(self, store: StateStore) -> None:
        """ORCH-2600 (proof of ORCH-2602): the ids of every task queued in the pool,
        sorted, whoever admitted it; not the running, ended or requeued-then-run ones."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(1))
        assert await store.queued("p") == []
        await store.submit(_spec("t3"))
        await store.submit(_spec("t1", "interactive"))
        for t in ("t2", "t0"):
            await store.submit(_spec(t))
        d = await store.dispatch("p", "i1", 60_000)  # t1: the interactive head
        assert isinstance(d, Dispatched) and d.task.task_id == "t1"
        await store.cancel("t0")
        assert await store.queued("p") == ["t2", "t3"]
        await store.requeue("t1", d.epoch)
        assert await store.queued("p") == ["t1", "t2", "t3"]

    async def test_unattended_lists_what_no_live_instance_admitted(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2603 (proof of ORCH-2605): the admitting instance is recorded by
        ``submit(task, admitter)`` and by ``submit_dispatch`` (its ``instance``);
        ``unattended`` lists the queued tasks of the pool whose admitter is not live
        (none recorded, never a heartbeat, or expired), sorted; not a running one."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(1))
        await store.heartbeat("i-a", 60_000)
        await store.heartbeat("i-b", 1_000)
        _, d = await store.submit_dispatch(_spec("run"), "i-gone", 60_000)
        assert isinstance(d, Dispatched) and d.task.task_id == "run"
        await store.submit(_spec("a1"), "i-a")
        await store.submit_dispatch(_spec("b1"), "i-b", 60_000)  # queued behind run
        await store.submit(_spec("n1"))
        await store.submit(_spec("g1", "interactive"), "i-gone")
        assert await store.unattended("p") == ["g1", "n1"]
        assert await store.queued("p") == ["a1", "b1", "g1", "n1"]
        await sut.advance(1.5)  # i-b's heartbeat expires
        assert await store.unattended("p") == ["b1", "g1", "n1"]
        await store.heartbeat("i-b", 60_000)  # back
        await store.heartbeat("i-a", 0)  # left
        assert await store.unattended("p") == ["a1", "g1", "n1"]

    async def test_unattended_follows_every_step_of_a_queued_task(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2612 (proof of ORCH-2613): a task whose admitter is not live is listed
        exactly while it is queued, through every step that queues it or takes it out of
        its queue: admitted, dispatched, requeued (its admitter kept), its lease reaped
        back to the queue, dispatched again, its bounded wait expired, canceled,
        displaced by a full queue, orphaned, ended by ``end_queued``."""
        await store.configure(_cfg(capacity=4, policy="drop-lru"))
        await store.set_replicas("p", _slots(1))
        await store.heartbeat("live", 60_000)
        await store.submit(_spec("g1"), "gone")
        await store.submit(_spec("g2"), "gone")
        await store.submit(_spec("n1"))
        await store.submit(_spec("l1"), "live")
        assert await store.unattended("p") == ["g1", "g2", "n1"]
        d = await store.dispatch("p", "live", 60_000)
        assert isinstance(d, Dispatched) and d.task.task_id == "g1"
        assert await store.unattended("p") == ["g2", "n1"]
        await store.requeue("g1", d.epoch)
        assert await store.unattended("p") == ["g1", "g2", "n1"]
        d = await store.dispatch("p", "live", 500)
        assert isinstance(d, Dispatched) and d.task.task_id == "g1"
        assert await store.unattended("p") == ["g2", "n1"]
        await sut.advance(0.7)
        await store.heartbeat("live", 60_000)
        reaped = await store.reap("live", 60_000)
        assert [(r.task_id, r.outcome) for r in reaped] == [("g1", "requeued")]
        assert await store.unattended("p") == ["g1", "g2", "n1"]
        d = await store.dispatch("p", "live", 60_000)
        assert isinstance(d, Dispatched) and d.task.task_id == "g1"
        assert await store.expire("g2", _drained())
        assert await store.unattended("p") == ["n1"]
        await store.cancel("n1")
        assert await store.unattended("p") == []
        for t in ("g3", "l2", "l3"):  # with l1: the queue is full
            await store.submit(_spec(t), "gone" if t[0] == "g" else "live")
        assert await store.unattended("p") == ["g3"]
        await store.cancel("l1")  # g3 is now the oldest: displaced by the next
        await store.submit(_spec("l4"), "live")
        got = await store.submit(_spec("l5"), "live")
        assert [t for t, _ in got.displaced] == ["g3"]
        assert await store.unattended("p") == []
        await store.cancel("l2")  # room for g4, pinned to a set with no replica
        await store.submit(_spec("g4", "interactive", pin="B"), "gone")
        assert await store.unattended("p") == ["g4"]
        assert await store.dispatch("p", "live", 60_000) == Orphaned(task_id="g4")
        assert await store.unattended("p") == []
        await store.heartbeat("live", 0)  # left: its queued tasks are listed
        assert await store.unattended("p") == ["l3", "l4", "l5"]
        await store.end_queued("p", _drained())
        assert await store.unattended("p") == []

    async def test_end_queued_ends_only_the_pools_queued_tasks(self, store: StateStore) -> None:
        """ORCH-2587: one step ends every queued task of the pool with the terminal
        (quota released, one terminal), leaves the running one to its owner."""
        d = await _running(store, "run", "q1", _spec("q2", "batch", "t2"), slots=1)
        assert await store.end_queued("p", _drained()) == ["q1", "q2"]
        assert await store.end_queued("p", _drained()) == []
        for tid in ("q1", "q2"):
            view = await store.task(tid)
            assert view is not None and view.state == "ended" and view.owner is None
            logged = await store.read(tid)
            assert [e.kind for e in logged] == ["error"]
            assert msgspec.json.decode(logged[0].data)["code"] == "POOL_UNAVAILABLE"
        assert await store.positions(["q1", "q2"]) == {}
        view = await store.task("run")
        assert view is not None and view.state == "running"
        await store.append("run", d.epoch, [Event("token", b'{"t":"x","i":0}')])  # still its
        await _end(store, d)
        with pytest.raises(TaskEnded):
            await _end(store, d)

    async def test_a_drain_answers_the_pools_tasks(self, store: StateStore) -> None:
        """ORCH-2609 (proof of ORCH-2611): the drain's step answers the pool's tasks
        queued or running at that step, sorted: not an ended one nor another pool's; a
        second drain answers those still queued or running; ``drains()`` lists none."""
        pools = {"p": PoolPolicy(capacity=100), "o": PoolPolicy(capacity=100)}
        await store.configure(StoreConfig(pools=pools))
        await store.set_replicas("p", _slots(2))
        await store.set_replicas("o", _slots(1))
        ended = await _running(store, "e1", slots=2)
        await store.configure(StoreConfig(pools=pools))
        await _end(store, ended)
        for tid in ("r2", "r1", "q1"):
            await store.submit(_spec(tid))
        runs = [await store.dispatch("p", "i1", 60_000) for _ in range(2)]
        assert [d.task.task_id for d in runs if isinstance(d, Dispatched)] == ["r2", "r1"]
        await store.submit(TaskSpec(task_id="x1", pool="o", priority="batch"))
        await store.submit(TaskSpec(task_id="x2", pool="o", priority="batch"))
        assert isinstance(await store.dispatch("o", "i1", 60_000), Dispatched)
        first = await store.drain_pool("p", 5_000)
        assert first.tasks == ("q1", "r1", "r2")
        assert isinstance(runs[1], Dispatched)
        await _end(store, runs[1])
        again = await store.drain_pool("p", 5_000)
        assert again.tasks == ("q1", "r2")
        assert [d.tasks for d in await store.drains()] == [()]
