"""Replica state as reported by a pool manager (embedded or remote).

The pool manager owns engine processes; orchestratord only ever sees these
snapshots and places work on replicas whose ``state`` is ``ready``
(ORCH-1301). A replica set is the group of replicas that may serve the same
task interchangeably: same engine, model digest, ctx, engine version and
sampler profile (ORCH-1302).
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["ReplicaSetKey", "ReplicaState", "ReplicaStatus"]

ReplicaStatus = Literal["provisioning", "starting", "ready", "draining", "stopped", "failed"]


class ReplicaSetKey(msgspec.Struct, frozen=True):
    engine: str
    model_digest: str
    ctx: int
    engine_version: str
    sampler_profile_version: str = "v1"
    quant: str = ""


class ReplicaState(msgspec.Struct, kw_only=True):
    pool_id: str
    replica_id: str
    engine: str
    status: ReplicaStatus
    base_url: str = ""
    model_ref: str = ""
    model_digest: str = ""
    engine_version: str = ""
    slots: int = 0
    ctx: int = 0
    pid: int | None = None
    cpu_inference: bool = False
    last_error: str | None = None
    ready_at: float | None = None  # time.time() when it became ready
    restarts: int = 0  # supervised restarts so far (ORCH-POOL-3007)
    backoff_ms: int = 0  # delay before the next restart, 0 when none is pending
    circuit_open: bool = False  # too many failures: no restart until a reload or reset

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def set_key(self) -> ReplicaSetKey:
        return ReplicaSetKey(self.engine, self.model_digest, self.ctx, self.engine_version)
