"""Errors raised by pool-managerd.

PoolManagerError
├── ProvisionError      an engine or model could not be found, built or verified
└── ReplicaStartError   an engine process did not become Ready
"""

from __future__ import annotations

__all__ = ["PoolManagerError", "ProvisionError", "ReplicaStartError"]


class PoolManagerError(Exception):
    """Base of every pool-managerd error."""


class ProvisionError(PoolManagerError):
    """An engine binary or a model could not be provisioned."""


class ReplicaStartError(PoolManagerError):
    """An engine replica failed to start or to pass its readiness gate."""
