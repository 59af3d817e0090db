"""The state-store conformance cases of hard preemption across instances (ORCH-2597;
proof of ORCH-2599): which run ``preempt`` chooses for the head, whom it tells, and
that a head gets one victim. :class:`~.state_store.StateStoreConformance` inherits
them."""

from __future__ import annotations

from llama_orch.core.config import Priority
from llama_orch.core.state_store import (
    Control,
    Dispatched,
    Event,
    Preemption,
    SlotView,
    StateStore,
)

from ._state_log_cases import StoreUnderTest, _cfg, _spec

__all__ = ["PreemptionCases"]


async def _run_on(
    store: StateStore, tid: str, instance: str, pin: str, prio: Priority = "batch"
) -> Dispatched:
    await store.submit(_spec(tid, prio, pin=pin))
    d = await store.dispatch("p", instance, 60_000)
    assert isinstance(d, Dispatched) and d.task.task_id == tid, d
    return d


class PreemptionCases:
    async def test_preempt_chooses_one_victim_across_instances(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2597: for a blocked interactive head pinned to set A, the run chosen is
        a batch run on a named replica of A owned by the caller, else the newest
        (highest epoch) of a live instance, whose owner is told on its channel; never
        a run of the head's priority, of another set, of a replica not named, or of an
        instance whose heartbeat expired; and one victim per head within ``ttl_ms``."""
        await store.configure(_cfg())
        await store.set_replicas(
            "p",
            [
                SlotView(replica_id="A-1", set_key="A", ready=True, slots=4),
                SlotView(replica_id="B-1", set_key="B", ready=True, slots=1),
            ],
        )
        for i in ("i-a", "i-b", "i-c"):
            await store.heartbeat(i, 60_000)
        cursors = {i: await store.control_cursor(i) for i in ("i-a", "i-b", "i-gone")}
        b1 = await _run_on(store, "b1", "i-a", "A")
        b2 = await _run_on(store, "b2", "i-b", "A")
        x1 = await _run_on(store, "x1", "i-b", "A", "interactive")  # the head's priority
        b3 = await _run_on(store, "b3", "i-gone", "A")  # newest, but no heartbeat
        b4 = await _run_on(store, "b4", "i-b", "B")  # newer than b2, another set
        assert b1.epoch < b2.epoch < x1.epoch < b3.epoch < b4.epoch
        assert await store.preempt("p", "i-c", ["A-1"], 1_000) is None  # nothing queued
        await store.submit(_spec("h", "interactive", pin="A"))
        assert await store.dispatch("p", "i-c", 60_000) is None  # A-1 is full
        # only B-1 named: A-1's runs are not the caller's to name (not interruptible)
        assert await store.preempt("p", "i-c", ["B-1"], 1_000) is None
        got = await store.preempt("p", "i-c", ["A-1", "B-1"], 1_000)
        assert got == Preemption(task_id="b2", owner="i-b")
        assert (await store.wait_control("i-b", cursors["i-b"], 1))[1] == [
            Control("preempt", "b2", "p")
        ]
        # the same head: no second victim, not even the caller's own run
        assert await store.preempt("p", "i-a", ["A-1"], 1_000) is None
        assert await store.preempt("p", "i-c", ["A-1"], 1_000) is None
        view = await store.task("b2")
        assert view is not None and view.state == "running"  # its owner interrupts it
        await sut.advance(1.2)  # the choice for the head has expired
        got = await store.preempt("p", "i-a", ["A-1"], 1_000)
        assert got == Preemption(task_id="b1", owner="i-a")  # the caller's own first
        assert await store.wait_control("i-a", cursors["i-a"], 0.2) == (cursors["i-a"], [])
        assert await store.wait_control("i-gone", cursors["i-gone"], 0.2) == (
            cursors["i-gone"],
            [],
        )
        # a batch head: no run is of a strictly lower priority
        await store.cancel("h")
        await store.submit(_spec("h2", "batch", pin="A"))
        assert await store.preempt("p", "i-c", ["A-1", "B-1"], 1_000) is None

    async def test_preempt_follows_every_step_of_a_run(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2606, ORCH-2607: the victim ``preempt`` chooses stays the one the scan
        of every running task chose through each step that starts, moves, gives back,
        ends or claims a run: a moved run is found on its new replica only, a requeued,
        ended or canceled run is never chosen, a run of a gone owner is not chosen until
        a live instance claims it, and then as that instance's run with its new epoch."""

        async def choose(instance: str, replicas: list[str]) -> Preemption | None:
            await sut.advance(0.01)  # the last choice for the head (ttl 1 ms) has expired
            return await store.preempt("p", instance, replicas, 1)

        await store.configure(_cfg())
        await store.set_replicas(
            "p", [SlotView(replica_id="A-1", set_key="A", ready=True, slots=8)]
        )
        for i in ("i-a", "i-b", "i-c"):
            await store.heartbeat(i, 60_000)
        d1 = await _run_on(store, "b1", "i-a", "A")
        d2 = await _run_on(store, "b2", "i-b", "A")
        d3 = await _run_on(store, "b3", "i-a", "A")
        d4 = await _run_on(store, "b4", "i-b", "A")
        await store.submit(_spec("b5", pin="A"))
        d5 = await store.dispatch("p", "i-old", 200)  # an owner with no heartbeat
        assert isinstance(d5, Dispatched) and d5.task.task_id == "b5"
        await store.append("b5", d5.epoch, [Event("started", b"{}")])  # mid-stream
        assert all(d.replica_id == "A-1" for d in (d1, d2, d3, d4, d5))
        await store.set_replicas(
            "p",
            [
                SlotView(replica_id="A-1", set_key="A", ready=True, slots=8),
                SlotView(replica_id="A-2", set_key="A", ready=True, slots=8),
            ],
        )
        assert await store.move("b3", d3.epoch, "A-2")
        await store.submit(_spec("h", "interactive"))
        # moved: found on its new replica only
        assert await choose("i-c", ["A-2"]) == Preemption(task_id="b3", owner="i-a")
        assert await choose("i-c", ["A-1"]) == Preemption(task_id="b4", owner="i-b")
        # given back: the owner's next newest
        await store.requeue("b4", d4.epoch)
        assert await choose("i-b", ["A-1"]) == Preemption(task_id="b2", owner="i-b")
        # ended: another live instance's newest
        await store.append("b2", d2.epoch, [Event("end", b"{}")])
        assert await choose("i-b", ["A-1"]) == Preemption(task_id="b1", owner="i-a")
        # canceled: what is left on A-1 is the gone owner's run
        await store.cancel("b1")
        assert await choose("i-b", ["A-1"]) is None
        # claimed by a live instance: its own run, the newest epoch of all
        await sut.advance(0.4)
        reaped = await store.reap("i-c", 60_000)
        assert [(r.task_id, r.outcome) for r in reaped] == [("b5", "claimed")]
        assert await choose("i-c", ["A-1"]) == Preemption(task_id="b5", owner="i-c")
        assert await choose("i-b", ["A-1", "A-2"]) == Preemption(task_id="b5", owner="i-c")
        assert await choose("i-a", ["A-1", "A-2"]) == Preemption(task_id="b3", owner="i-a")
