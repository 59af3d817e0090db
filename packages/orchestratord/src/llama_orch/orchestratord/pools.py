"""Runtime view of pools and replicas: queues, slots, adapters (ORCH-1301).

A :class:`Pool` owns its admission queue, its drain-rate estimate and the
replicas the pool manager (or the config's ``endpoints``) reported. Only
replicas in status ``ready`` with a free slot are ever chosen.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from llama_orch.core.adapter_api import AdapterTarget, WorkerAdapter, load_adapter_class
from llama_orch.core.config import AdmissionConfig, PoolConfig
from llama_orch.core.queue import AdmissionQueue, DrainRate
from llama_orch.core.replica import ReplicaState

from .tasks import TaskRecord

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


@dataclass(eq=False)
class Pool:
    config: PoolConfig
    admission: AdmissionConfig
    queue: AdmissionQueue[TaskRecord] = field(init=False)
    drain: DrainRate = field(init=False)
    replicas: dict[str, Replica] = field(default_factory=dict)
    states: dict[str, ReplicaState] = field(default_factory=dict)  # every replica, any status
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False

    def __post_init__(self) -> None:
        self.queue = AdmissionQueue(self.admission.queue_capacity, self.admission.full_policy)
        self.drain = DrainRate(self.config.slots * self.config.replicas)

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

    def place(self, session_replica: str | None = None) -> Replica | None:
        """Ready replica with the most free slots, then session affinity, then the
        lowest ``replica_id``: deterministic for a given state (ORCH-1303, ORCH-1404)."""
        best: Replica | None = None
        best_key = (0, False)
        for rid in sorted(self.replicas):  # ascending: ties keep the lowest id
            r = self.replicas[rid]
            key = (r.free_slots, rid == session_replica)  # free_slots is 0 unless Ready
            if key[0] > 0 and key > best_key:
                best, best_key = r, key
        return best

    def update(self, state: ReplicaState, adapter: WorkerAdapter | None = None) -> None:
        """Apply a pool-manager snapshot; ready replicas get an adapter."""
        self.states[state.replica_id] = state
        current = self.replicas.get(state.replica_id)
        if state.ready:
            if current is None or current.state.base_url != state.base_url:
                adapter = adapter or load_adapter_class(self.engine)(
                    AdapterTarget(
                        replica_id=state.replica_id,
                        base_url=state.base_url,
                        model_ref=state.model_ref,
                        model_digest=state.model_digest,
                        engine_version=state.engine_version,
                        options=dict(self.config.adapter_options),
                    )
                )
                if current is not None:
                    asyncio.get_running_loop().create_task(current.adapter.aclose())
                self.replicas[state.replica_id] = Replica(
                    state, adapter, current.busy if current else 0
                )
            else:
                current.state = state
            self.drain.slots = max(1, self.total_slots())
            self.wakeup.set()
        elif current is not None:
            # Not ready any more: stop placing on it. Running tasks fail on
            # their own through the adapter (connection reset).
            current.state = state
            if state.status == "failed":
                _log.warning("replica %s failed: %s", state.replica_id, state.last_error)
