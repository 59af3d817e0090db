"""Response types the client parses that are not in ``llama_orch.core.api``.

They are tolerant on purpose (unknown fields are ignored, optional fields
have defaults): the server may add fields in a minor version and an older
CLI must keep working (STYLE rule 6).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["Capabilities", "PoolCapability", "PoolHealth", "TaskStatus"]


class TaskStatus(msgspec.Struct, kw_only=True):
    """``GET /v1/tasks/{id}``."""

    task_id: str
    state: str
    pool_id: str | None = None
    replica_id: str | None = None
    queue_position: int | None = None
    tokens_out: int = 0
    created_ms: int | None = None


class PoolCapability(msgspec.Struct, kw_only=True):
    id: str
    engine: str
    model_ref: str | None = None
    ctx_max: int | None = None
    slots: int | None = None
    replicas_ready: int = 0


class Capabilities(msgspec.Struct, kw_only=True):
    """``GET /v1/capabilities``."""

    api_version: str
    engines: list[str] = []
    workloads: list[str] = []
    cpu_inference: bool = False
    pools: list[PoolCapability] = []
    limits: dict[str, Any] = {}
    features: Any = None


class PoolHealth(msgspec.Struct, kw_only=True):
    """``GET /v1/pools/{id}/health``."""

    pool_id: str
    live: bool
    ready: bool
    draining: bool = False
    last_error: str | None = None
    replicas: list[dict[str, Any]] = []

    def failed_replicas(self) -> list[dict[str, Any]]:
        """Replicas whose reported state says they gave up (not merely starting)."""
        return [r for r in self.replicas if str(r.get("state", "")).lower() in _FAILED_STATES]


_FAILED_STATES = frozenset({"failed", "crashed", "error", "broken"})
