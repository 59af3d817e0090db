"""Errors raised by pool-managerd.

PoolManagerError
├── ProvisionError      an engine or model could not be found, built or verified
│   └── VerificationError   a digest did not match its pin (never retried, ORCH-3027)
├── PreloadError        the host cannot hold the model (RAM/VRAM headroom)
├── ReplicaStartError   an engine process did not become Ready
└── ReloadError         a reload was refused or rolled back; the old replicas serve on
"""

from __future__ import annotations

__all__ = [
    "PoolManagerError",
    "PreloadError",
    "ProvisionError",
    "ReloadError",
    "ReplicaStartError",
    "VerificationError",
]


class PoolManagerError(Exception):
    """Base of every pool-managerd error."""


class ProvisionError(PoolManagerError):
    """An engine binary or a model could not be provisioned."""


class VerificationError(ProvisionError):
    """A downloaded or local artifact does not have its pinned or expected sha256."""


class ReplicaStartError(PoolManagerError):
    """An engine replica failed to start or to pass its readiness gate."""


class PreloadError(PoolManagerError):
    """A preload check (RAM or VRAM headroom) refused to load the model."""


class ReloadError(PoolManagerError):
    """A reload failed; ``verification`` is True when the new model failed verification."""

    def __init__(self, message: str, *, verification: bool = False) -> None:
        super().__init__(message)
        self.verification = verification
