"""Runtime view of pools and replicas: queues, slots, adapters (ORCH-1301).

A :class:`Pool` owns its admission queue and the replicas the pool manager
(or the config's ``endpoints``) reported. Only replicas in status ``ready`` with a
free slot are ever chosen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
from llama_orch.core.adapter_api import AdapterTarget, WorkerAdapter, load_adapter_class
from llama_orch.core.config import AdmissionConfig, PoolConfig, SchedulingConfig
from llama_orch.core.placement import ReplicaView
from llama_orch.core.queue import AdmissionQueue
from llama_orch.core.replica import ReplicaState

from .tasks import TaskRecord

if TYPE_CHECKING:  # forecast_pass.py imports this module
    from .forecast_pass import ToldEnds

__all__ = ["Pool", "Replica"]

_log = logging.getLogger("llama_orch.orchestratord")


@dataclass(eq=False)
class Replica:
    state: ReplicaState
    adapter: WorkerAdapter
    busy: int = 0

    @property
    def free_slots(self) -> int:
        return max(0, self.state.slots - self.busy) if self.state.ready else 0

    def view(self) -> ReplicaView:
        return ReplicaView(
            self.state.replica_id,
            self.state.set_key(),
            self.state.ready,
            self.state.slots,
            self.busy,
        )


@dataclass(eq=False)
class Pool:
    config: PoolConfig
    admission: AdmissionConfig
    queue: AdmissionQueue[TaskRecord] = field(init=False)
    replicas: dict[str, Replica] = field(default_factory=dict)
    states: dict[str, ReplicaState] = field(default_factory=dict)  # every replica, any status
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # set at every replica change (readiness, a snapshot), not per submit or freed slot:
    # what a store's dispatcher waits on beside the store's doorbell (ORCH-2596)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False
    _probes: set[asyncio.Task[None]] = field(default_factory=set)  # suspect re-admission
    _closing: set[asyncio.Task[None]] = field(default_factory=set)  # replaced adapters
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    # Holds a Ready snapshot back until it returns True (startup self-tests, ORCH-7050).
    gate: Callable[[Pool, ReplicaState, WorkerAdapter | None], bool] | None = None
    # Since when the pool has had no Ready replica (None while it has one), noted at
    # every readiness change rather than sampled, for bounded waits (ORCH-1965).
    unready_since: float | None = field(default_factory=time.monotonic)
    # The waiting loop's last pass: each tenant's earliest told finish (ORCH-1129)
    told_ends: ToldEnds | None = None

    def __post_init__(self) -> None:
        sched = self.scheduling
        self.queue = AdmissionQueue(
            self.admission.queue_capacity,
            self.admission.full_policy,
            weights=sched.priority_weights,
            tenant_weights={t: c.weight for t, c in sched.tenants.items()},
        )

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def engine(self) -> str:
        return self.config.engine

    def ready_replicas(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state.ready]

    def running(self) -> int:
        return sum(r.busy for r in self.replicas.values())

    def total_slots(self) -> int:
        return sum(r.state.slots for r in self.ready_replicas())

    def ctx_max(self) -> int:
        ready = self.ready_replicas()
        return min((r.state.ctx for r in ready), default=self.config.ctx)

    def any_adapter(self) -> WorkerAdapter | None:
        ready = self.ready_replicas()
        return ready[0].adapter if ready else None

    def views(self) -> list[ReplicaView]:
        return [r.view() for r in self.replicas.values()]

    def suspect(self, replica_id: str, reason: str, *, probe_s: float = 0.25) -> None:
        """Stop placing on a replica that failed to answer; re-admit it when its
        health check passes, unless a newer snapshot arrived meanwhile (ORCH-1117)."""
        replica = self.replicas.get(replica_id)
        if replica is None or not replica.state.ready:
            return
        suspect = msgspec.structs.replace(replica.state, status="starting", last_error=reason)
        replica.state = suspect
        self.states[replica_id] = suspect
        self._note_readiness()

        async def probe() -> None:
            for _ in range(int(120 / probe_s)):
                await asyncio.sleep(probe_s)
                if replica.state is not suspect or self.replicas.get(replica_id) is not replica:
                    return  # the pool manager reported something newer
                health = await replica.adapter.health()
                if health.ready:
                    back = msgspec.structs.replace(suspect, status="ready", last_error=None)
                    replica.state = back
                    self.states[replica_id] = back
                    self._note_readiness()
                    self.wakeup.set()
                    return

        self._probes.add(task := asyncio.get_running_loop().create_task(probe()))
        task.add_done_callback(self._probes.discard)

    async def stop_tasks(self) -> None:
        """At shutdown, before the replicas' adapters close (ORCH-2817): the suspect
        probes are cancelled and awaited, the closes of replaced adapters awaited."""
        for probe in self._probes:
            probe.cancel()
        await asyncio.gather(*self._probes, *self._closing, return_exceptions=True)

    def new_adapter(self, state: ReplicaState) -> WorkerAdapter:
        return load_adapter_class(self.engine)(
            AdapterTarget(
                replica_id=state.replica_id,
                base_url=state.base_url,
                model_ref=state.model_ref,
                model_digest=state.model_digest,
                engine_version=state.engine_version,
                options=dict(self.config.adapter_options),
            )
        )

    def update(self, state: ReplicaState, adapter: WorkerAdapter | None = None) -> None:
        """Apply a pool-manager snapshot; ready replicas get an adapter."""
        if state.ready and self.gate is not None and not self.gate(self, state, adapter):
            return  # the gate applies it after its checks
        self.states[state.replica_id] = state
        current = self.replicas.get(state.replica_id)
        if state.ready:
            # Compare with the address the adapter talks to, not the last
            # snapshot: a restarted engine may publish its new port only when
            # it becomes ready again (ORCH-POOL-3015).
            if current is None or current.adapter.target.base_url != state.base_url:
                adapter = adapter or self.new_adapter(state)
                if current is not None:  # tracked: awaited at shutdown (ORCH-2817)
                    closing = asyncio.get_running_loop().create_task(current.adapter.aclose())
                    self._closing.add(closing)
                    closing.add_done_callback(self._closing.discard)
                self.replicas[state.replica_id] = Replica(
                    state, adapter, current.busy if current else 0
                )
            else:
                current.state = state
            self.wakeup.set()
        elif current is not None:
            # Not ready any more: stop placing on it. Running tasks fail on
            # their own through the adapter (connection reset).
            current.state = state
            if state.status == "failed":
                _log.warning("replica %s failed: %s", state.replica_id, state.last_error)
        self._note_readiness()

    def _note_readiness(self) -> None:
        self.changed.set()
        if self.ready_replicas():
            self.unready_since = None
        elif self.unready_since is None:
            self.unready_since = time.monotonic()
