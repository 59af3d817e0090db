"""Wire messages of the replica registry stream (ORCH-3022).

A remote ``pool-managerd`` pushes these to orchestratord as newline-delimited
JSON on ``GET /v1/replicas/stream``. Every message carries ``lease_ttl_ms``
and renews the consumer's lease on that pool-managerd (ORCH-3024).
"""

from __future__ import annotations

import msgspec

from .replica import ReplicaState

__all__ = ["Lease", "RegistryMessage", "ReplicaChanged", "Snapshot", "registry_decoder"]


class Snapshot(msgspec.Struct, tag="snapshot", kw_only=True):
    """Every replica the pool-managerd runs, sent first on each stream."""

    lease_ttl_ms: int
    replicas: list[ReplicaState]


class ReplicaChanged(msgspec.Struct, tag="replica", kw_only=True):
    lease_ttl_ms: int
    state: ReplicaState


class Lease(msgspec.Struct, tag="lease", kw_only=True):
    """Sent when nothing else was sent for a third of the lease TTL."""

    lease_ttl_ms: int


RegistryMessage = Snapshot | ReplicaChanged | Lease
registry_decoder: msgspec.json.Decoder[RegistryMessage] = msgspec.json.Decoder(RegistryMessage)
