"""llama-orch pool manager: provisions, starts, gates and stops engine replicas.

Embedded use (orchestratord, single host)::

    async with PoolManager(config, on_change=publish) as pm:
        ...  # pm.replicas() are ReplicaState snapshots
"""

from __future__ import annotations

from .errors import PoolManagerError, ProvisionError, ReplicaStartError
from .pool import PoolManager, launch_blocker

__all__ = [
    "PoolManager",
    "PoolManagerError",
    "ProvisionError",
    "ReplicaStartError",
    "launch_blocker",
]
