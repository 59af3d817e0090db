"""Errors of orchestratord itself (client-visible errors live in llama_orch.core.errors).

OrchestratordError
└── StartupError     config or environment prevents the daemon from starting
"""

from __future__ import annotations

__all__ = ["OrchestratordError", "StartupError"]


class OrchestratordError(Exception):
    """Base of daemon-level errors."""


class StartupError(OrchestratordError):
    """The daemon cannot start (bad config, port in use, missing extra or adapter)."""
