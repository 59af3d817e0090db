"""The seeded operation replay of the state-store conformance suite (ORCH-2504)."""

from __future__ import annotations

import random
from typing import Any

from llama_orch.core.config import FullPolicy, TenantConfig
from llama_orch.core.errors import AdmissionRejected
from llama_orch.core.state_store import (
    TERMINAL_KINDS,
    Dispatched,
    Event,
    PlacementHint,
    PoolPolicy,
    StateStore,
    StoreConfig,
    TaskEnded,
    TaskSpec,
)

from ._state_log_cases import _slots

__all__ = ["replay"]


def _hint(rng: random.Random) -> PlacementHint | None:
    """No hint, least-loaded's work per replica, or a round-robin position (ORCH-2578)."""
    x = rng.random()
    if x < 0.4:
        return None
    loads = {r: rng.randrange(3) * 100 for r in ("A-1", "A-2", "B-1")}
    if x < 0.7:
        return PlacementHint(loads=loads)
    after = rng.choice([None, "A-1", "A-2", "B-1"])
    return PlacementHint(loads=loads, round_robin=True, rotate_after=after)


async def replay(store: StateStore, policy: FullPolicy, seed: int) -> list[Any]:
    """Replay a seeded operation sequence; return every answer in a comparable form."""
    rng = random.Random(seed)
    moves = random.Random(seed + 1)  # its own stream: the trace of the rest is unchanged
    hints = random.Random(seed + 3)  # a stream whose trace still covers every rule
    # who dispatches, what is given back and when preempt is asked (ORCH-2607): their
    # own streams; "k" never sends a heartbeat, "x" owns no run
    owners, backs, asks = random.Random(seed + 5), random.Random(seed + 6), random.Random(seed + 7)
    # who admits (ORCH-2613): "k" never live, None none recorded; "j" leaves at step 250
    # and comes back at 350, so its queued tasks are unattended in between
    admitters = random.Random(seed + 8)
    tenants = {
        "a": TenantConfig(weight=3),
        "b": TenantConfig(weight=1),
        "c": TenantConfig(weight=2, max_concurrent=4),  # time-free quota: comparable
    }
    pools = {
        "p": PoolPolicy(
            capacity=12, full_policy=policy, priority_weights={"interactive": 3, "batch": 1}
        )
    }
    await store.configure(StoreConfig(pools=pools, tenants=tenants))
    await store.set_replicas("p", _slots(**{"A-1": 2, "A-2": 1, "B-1": 2}))
    for instance in ("i", "j"):
        await store.heartbeat(instance, 600_000)
    out: list[Any] = []
    running: list[Dispatched] = []
    known: list[str] = []
    for n in range(400):
        if n in (250, 350):
            await store.heartbeat("j", 0 if n == 250 else 600_000)
        if n in (200, 300):  # set B disappears, then comes back: pinned heads are orphaned
            sets = {"A-1": 2, "A-2": 1} if n == 200 else {"A-1": 2, "A-2": 1, "B-1": 2}
            await store.set_replicas("p", _slots(**sets))
        op = rng.random()
        if op < 0.5:
            tid = f"t{n}"
            spec = TaskSpec(
                task_id=tid,
                pool="p",
                priority=rng.choice(["interactive", "batch"]),
                tenant=rng.choice("abc"),
                deadline_ms=1_900_000_000_000 + rng.randrange(50) if rng.random() < 0.2 else None,
                pin="B" if rng.random() < 0.25 else None,
            )
            try:
                got = await store.submit(spec, admitters.choice(["i", "j", "k", None]))
                known.append(tid)
                out.append(("admit", got.queue_position, got.displaced))
            except AdmissionRejected as exc:
                out.append(("reject", exc.policy_label))
        elif op < 0.75:
            d = await store.dispatch("p", owners.choice("ijk"), 60_000, _hint(hints))
            if isinstance(d, Dispatched):
                running.append(d)
                out.append(("run", d.task.task_id, d.replica_id, d.candidates, d.affinity))
                if moves.random() < 0.3:  # the instance's policy prefers the last candidate
                    to = d.candidates[-1][0]
                    out.append(("move", to, await store.move(d.task.task_id, d.epoch, to)))
            else:
                out.append(("dispatch", None if d is None else d.task_id))
        elif op < 0.9 and running:
            d = running.pop(rng.randrange(len(running)))
            back = backs.random() < 0.2  # given back to the front of its queue
            try:
                if back:
                    await store.requeue(d.task.task_id, d.epoch)
                else:
                    await store.append(d.task.task_id, d.epoch, [Event("end", b"{}")])
                out.append(("requeue" if back else "end", d.task.task_id))
            except TaskEnded:
                out.append(("requeue" if back else "end", "already"))
        elif known:
            tid = rng.choice(known)
            out.append(("cancel", tid, await store.cancel(tid)))
        if asks.random() < 0.3:  # the head's victim, as ORCH-2597 defines it
            named = [r for r in ("A-1", "A-2", "B-1") if asks.random() < 0.7]
            asker = asks.choice("ijkx")
            out.append(("preempt", asker, await store.preempt("p", asker, named, 600_000)))
        if n % 10 == 0:  # every queued task's exact position (ORCH-2560)
            out.append(("positions", sorted((await store.positions(known)).items())))
        if n % 5 == 0:  # the queued tasks no live instance admitted (ORCH-2603, ORCH-2612)
            out.append(("unattended", await store.unattended("p")))
    for tid in known:
        log = await store.read(tid)
        kinds = [e.kind for e in log]
        assert sum(k in TERMINAL_KINDS for k in kinds) <= 1 and (
            not any(k in TERMINAL_KINDS for k in kinds) or kinds[-1] in TERMINAL_KINDS
        ), (tid, kinds)
    out.append(("busy", await store.busy("p")))
    return out
