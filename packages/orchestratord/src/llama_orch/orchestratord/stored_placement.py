"""Placement policies and the placement hook on a state store (ORCH-2572..2577).

The store takes the dispatch decision (serving order, replica set, a reserved
slot) in one atomic step and answers, with it, the Ready replicas of the chosen
set and their free slots as every instance's reservations leave them
(``Dispatched.candidates``) and the session's last replica (``affinity``). Here
the pool's placement policy and then the placement hook choose among those
candidates exactly as the in-process dispatch chooses among its own replicas
(:meth:`Placer.chooser`, :func:`~.policies.choose_replica`). When they agree
with the store, the task runs where the store reserved: no further call. When
they prefer another replica, one atomic ``move`` re-reserves there before the
run starts; if that slot was taken meanwhile, the task runs on the store's
replica (ORCH-2575).

What is whose (ORCH-2576): slots, set choice and session pins are the store's;
the prefix index and slot table learn from this instance's runs, round-robin
continues from this instance's last pick, and the work assigned to a replica
(least-loaded's tie-break, the hook's ``queued_tokens``) is this instance's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import msgspec
from llama_orch.core.placement import Dispatch, ReplicaView
from llama_orch.core.state_store import (
    Dispatched,
    Event,
    PlacementHint,
    StateStoreError,
    StoreUnavailable,
)

from .ending import error_event
from .placer import Held
from .policies import choose_replica
from .pools import Pool, Replica
from .tasks import TaskRecord

if TYPE_CHECKING:
    from .dispatch import Dispatcher
    from .stored import StoreBridge

_log = logging.getLogger("llama_orch.orchestratord")

__all__ = ["StorePlacement"]


class StorePlacement:
    """The instance's side of placement on a store: choose, then count and learn."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    def _hook(self) -> bool:
        host = self.dispatcher.policies  # swapped by a policy reload (ORCH-8570)
        return host is not None and host.cfg.placement is not None

    def hint(self, pool: Pool) -> PlacementHint | None:
        """What the store needs to pick as this instance's policy would without a task
        in hand (ORCH-2578): the work assigned per replica, and round-robin's last
        pick; None with one replica (nothing to choose)."""
        if len(pool.replicas) <= 1:
            return None
        loads = {v.replica_id: v.load for v in self.dispatcher.workload.views(pool) if v.load}
        if pool.config.placement.policy == "round-robin":
            last = self.dispatcher.placer.last_pick(pool)
            return PlacementHint(loads=loads, round_robin=True, rotate_after=last)
        return PlacementHint(loads=loads)

    def choose(self, pool: Pool, rec: TaskRecord, d: Dispatched) -> Replica | None:
        """The replica the pool's policy and the placement hook pick among the dispatch's
        candidates (ORCH-2572); the store's own replica when they pick none; None when
        the hook failed closed (ORCH-8550)."""
        store_pick = pool.replicas[d.replica_id]
        policy = pool.config.placement.policy
        free = {rid: n for rid, n in d.candidates if rid in pool.replicas}
        hook = self._hook()
        if policy == "least-loaded" and not hook:
            # one candidate, or the store chose with this instance's hint (ORCH-2578):
            # its pick is least-loaded's at the time of the call; loads that moved by a
            # few tokens since would only buy a move for nothing (ORCH-2575)
            return store_pick
        placer, workload = self.dispatcher.placer, self.dispatcher.workload
        loads = {v.replica_id: v.load for v in workload.views(pool)}
        views: list[ReplicaView] = []
        for rid, n in free.items():
            st = pool.replicas[rid].state
            views.append(
                ReplicaView(
                    rid, st.set_key(), st.ready, st.slots, max(0, st.slots - n), loads.get(rid, 0)
                )
            )
        if not views:  # the store knows replicas this instance does not (yet)
            return store_pick
        picked = placer.chooser(pool, rec, d.affinity)(views)
        replica = store_pick
        if picked is not None and picked.free > 0:
            replica = pool.replicas[picked.replica_id]
        if hook:
            host = self.dispatcher.policies
            assert host is not None
            step = Dispatch(rec, replica.state.replica_id, replica.state.set_key())
            return choose_replica(
                host,
                pool,
                rec,
                step,
                d.affinity,
                workload=workload,
                scraper=self.dispatcher.scraper,
                placer=placer,
                free=free,
            )
        return replica

    def dispatched(self, pool: Pool, replica: Replica, rec: TaskRecord) -> None:
        """The task starts on ``replica``: what the in-process dispatch does then
        (ORCH-2302 learning, ORCH-2320 decision count, ORCH-2350 slot pin)."""
        self.dispatcher.placer.dispatched(pool, replica, rec)

    def run(self, bridge: StoreBridge, pool: Pool, rec: TaskRecord, d: Dispatched) -> None:
        """Start what the store dispatched here on the replica placement chooses: at
        once when it is the store's, after one ``move`` when it is not (ORCH-2575)."""
        replica = pool.replicas[d.replica_id]
        try:
            chosen = self.choose(pool, rec, d)
        except Exception:
            # ORCH-2414: a failing choice must not lose the task: the store's reservation
            _log.exception("placement of task %s on a store failed", rec.task_id)
            chosen = replica
        if chosen is None:  # the hook failed closed (ORCH-8550), under the task's epoch
            bridge.drop_log(rec.task_id)
            bridge.track(asyncio.get_running_loop().create_task(self._refuse(bridge, rec, d)))
            return
        if chosen.state.replica_id == d.replica_id:
            self.dispatched(pool, replica, rec)
            bridge.go(pool, replica, rec, d.epoch, d.next_seq)
            return
        held = self.dispatcher.placer.hold(pool)
        move = self._move(bridge, pool, rec, d, chosen.state.replica_id, held)
        bridge.track(asyncio.get_running_loop().create_task(move))

    async def _move(
        self, bridge: StoreBridge, pool: Pool, rec: TaskRecord, d: Dispatched, to: str, held: Held
    ) -> None:
        target = d.replica_id
        try:
            with bridge.timed("move"):
                if await bridge.store.move(rec.task_id, d.epoch, to):
                    target = to
        except StoreUnavailable:
            pass  # the store's reservation stands: run there
        except (StateStoreError, KeyError):
            # canceled, ended or taken over meanwhile: the store's log says what follows
            bridge.drop_log(rec.task_id)
            if not rec.terminal:
                bridge.tasks.forget(rec.task_id)
            return
        replica = pool.replicas.get(target)
        if replica is None:  # gone from this instance while the move was in flight
            bridge.drop_log(rec.task_id)
            bridge.requeue(rec.task_id, d.epoch)
            return
        self.dispatcher.placer.resume(pool, held)
        self.dispatched(pool, replica, rec)
        bridge.go(pool, replica, rec, d.epoch, d.next_seq)

    async def _refuse(self, bridge: StoreBridge, rec: TaskRecord, d: Dispatched) -> None:
        ev = error_event(rec, "the placement policy failed (on_error: closed)")
        with contextlib.suppress(StateStoreError, KeyError, StoreUnavailable):
            await bridge.store.append(
                rec.task_id, d.epoch, [Event("error", msgspec.json.encode(ev))]
            )
        rec.finish(ev)
