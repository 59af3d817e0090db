"""The ``memory`` store's task record and the round-robin chooser a placement
hint asks for (ORCH-2578)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .placement import ReplicaView
from .state_store import LoggedEvent, TaskSpec

__all__ = ["TaskRecord", "rotation"]


@dataclass(slots=True)
class TaskRecord:
    spec: TaskSpec
    state: Literal["queued", "running", "ended"] = "queued"
    epoch: int = 0
    owner: str | None = None
    replica: str | None = None
    requeues: int = 0
    canceled: bool = False
    lease_until: float | None = None
    ended_at: float | None = None
    log: list[LoggedEvent] = field(default_factory=list)
    changed: asyncio.Event | None = None
    queued_note: tuple[int, int, float] | None = None  # last `queued` event (ORCH-2561)
    dispatch_seq: int = 0  # log length at the last dispatch: earlier events are `queued`
    set_key: str | None = None  # the replica set of the last dispatch (ORCH-2574)
    admitter: str | None = None  # the admitting instance (ORCH-2603)


def rotation(after: str | None) -> Callable[[list[ReplicaView[str]]], ReplicaView[str] | None]:
    """``core.placement_policy.round_robin`` over the replicas with a free slot: the
    first after ``after`` by id, wrapping."""

    def rotate(vs: list[ReplicaView[str]]) -> ReplicaView[str] | None:
        free = sorted((v for v in vs if v.free > 0), key=lambda v: v.replica_id)
        if not free:
            return None
        return next((v for v in free if after is not None and v.replica_id > after), free[0])

    return rotate
