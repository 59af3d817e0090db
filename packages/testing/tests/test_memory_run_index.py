"""The memory store's index of running tasks for ``preempt`` (ORCH-2617, ORCH-2618).

Read directly: after seeded replays, after a claim and a lease given back by ``reap``,
and once every task ended, it holds exactly the running tasks (from their views) with
their pool, priority, replica, owner and epoch; and along the replays ``preempt``
answers what a scan of every task's view answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from llama_orch.core.config import FullPolicy
from llama_orch.core.queue import PRIORITIES
from llama_orch.core.state_memory import MemoryStateStore
from llama_orch.core.state_store import (
    Dispatched,
    Event,
    PoolPolicy,
    Preemption,
    SlotView,
    StoreConfig,
    TaskSpec,
)
from llama_orch.testing._state_replay import replay

IDS = [f"t{n}" for n in range(400)]  # every id the replay may admit


class ScanChecked(MemoryStateStore):
    """The memory store whose ``preempt`` is checked, call by call, against a scan of
    every task's view (ORCH-2597's definition); the head's victim is not remembered
    (ttl 0), so every call chooses."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: 0.0)
        self.answers: list[tuple[Preemption | None, Preemption | None]] = []

    async def preempt(
        self, pool: str, instance: str, replicas: Sequence[str], ttl_ms: int
    ) -> Preemption | None:
        expected = await self.scan(pool, instance, replicas)
        got = await super().preempt(pool, instance, replicas, 0)
        self.answers.append((expected, got))
        return got

    async def scan(self, pool: str, instance: str, replicas: Sequence[str]) -> Preemption | None:
        head = await self.head(pool)
        if head is None:
            return None
        rank, pin = PRIORITIES.index(head[0]), head[1]
        live = {v.instance_id for v in await self.instances()}
        runs = []
        for tid in IDS:
            v = await self.task(tid)
            if (
                v is not None
                and v.state == "running"
                and v.task.pool == pool
                and PRIORITIES.index(v.task.priority) > rank
                and v.replica_id in replicas
                and (pin is None or (v.replica_id or "").split("-")[0] == pin)  # set of _slots
                and (v.owner == instance or v.owner in live)
            ):
                runs.append(v)
        if not runs:
            return None
        best = max(runs, key=lambda v: (v.owner == instance, v.epoch))
        assert best.owner is not None
        return Preemption(task_id=best.task.task_id, owner=best.owner)


async def _running(store: MemoryStateStore, ids: Sequence[str]) -> list[tuple[str, tuple]]:
    """What the index must hold, from the tasks' views."""
    out = []
    for tid in ids:
        v = await store.task(tid)
        if v is not None and v.state == "running":
            entry = (v.task.pool, v.task.priority, v.replica_id, v.owner, v.epoch)
            out.append((tid, entry))
    return sorted(out)


@pytest.mark.parametrize("seed", [2500, 2599, 7])
@pytest.mark.parametrize("policy", ["reject", "drop-lru", "shed-low-priority"])
async def test_the_index_is_the_running_tasks_and_preempt_the_scan(
    policy: FullPolicy, seed: int
) -> None:
    """ORCH-2618: after a seeded replay (dispatches by three instances, ends, cancels,
    requeues, moves) the index holds exactly the running tasks; every ``preempt`` along
    it answered what the scan answers; once every task is canceled it holds nothing."""
    store = ScanChecked()
    await replay(store, policy, seed)
    running = await _running(store, IDS)
    assert len(running) >= 2, "the replay must end with runs"
    assert store.run_index() == running
    chosen = [got for _, got in store.answers if got is not None]
    assert len(chosen) >= 3 and len({p.owner for p in chosen}) > 1
    assert [got for _, got in store.answers] == [exp for exp, _ in store.answers]
    for tid in IDS:
        if await store.task(tid) is not None:
            await store.cancel(tid)
    assert store.run_index() == []


async def test_a_claim_and_a_lease_given_back_keep_the_index() -> None:
    """ORCH-2618: ``reap`` claims a run that streamed (new owner, new epoch: found as
    the claimer's own run) and gives one that did not back to the queue (gone from the
    index); a terminal and a cancel empty it."""
    now = [1000.0]
    store = MemoryStateStore(clock=lambda: now[0])
    await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=10)}))
    await store.set_replicas("p", [SlotView(replica_id="r1", set_key="A", ready=True, slots=3)])
    for instance in ("i", "j"):
        await store.heartbeat(instance, 3_600_000)
    runs = {}
    for tid in ("a", "b"):
        _, d = await store.submit_dispatch(
            TaskSpec(task_id=tid, pool="p", priority="batch"), "i", 1000
        )
        assert isinstance(d, Dispatched)
        runs[tid] = d
    await store.append("a", runs["a"].epoch, [Event("token", b"{}")])
    assert store.run_index() == await _running(store, ["a", "b"])
    now[0] += 2.0
    reaped = {r.task_id: r for r in await store.reap("j", 1000)}
    assert reaped["a"].outcome == "claimed" and reaped["b"].outcome == "requeued"
    assert store.run_index() == [("a", ("p", "batch", "r1", "j", reaped["a"].epoch))]
    d = await store.dispatch("p", "i", 60_000)  # b again, from the front of its queue
    assert isinstance(d, Dispatched) and d.task.task_id == "b"
    assert store.run_index() == await _running(store, ["a", "b"])
    await store.submit(TaskSpec(task_id="head", pool="p", priority="interactive"))
    got = await store.preempt("p", "j", ["r1"], 60_000)
    assert got == Preemption(task_id="a", owner="j")  # j's own run, by its claim
    await store.append("a", reaped["a"].epoch, [Event("end", b"{}")])
    await store.cancel("b")
    assert store.run_index() == []
