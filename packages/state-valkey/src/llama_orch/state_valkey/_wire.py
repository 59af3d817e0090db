"""What crosses the wire to the llorch library: the store configuration as the
library reads it, and the decoders of its replies."""

from __future__ import annotations

import json
from typing import Any

from llama_orch.core.state_store import PlacementHint, StoreConfig

_PRIORITIES = ("interactive", "batch")  # highest first, as core.queue.PRIORITIES


# Replies of the llorch library are untyped arrays (Lua tables); their fields are
# read through _s (present: bulk string) and _opt (may be nil).
def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def _opt(x: bytes | str | None) -> str | None:
    if x is None:
        return None
    return x.decode() if isinstance(x, bytes) else x


def _pairs(flat: list[Any]) -> list[tuple[str, int]]:
    """A flat ``{id, n, id, n, ...}`` reply (``llorch_dispatch``'s candidates) as pairs."""
    return [(_s(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]


def _hint_args(hint: PlacementHint | None) -> list[Any]:
    """The placement hint's arguments of ``llorch_dispatch`` (ORCH-2578): none, or
    mode, the replica picked last, then (replica, load) pairs."""
    if hint is None:
        return []
    out: list[Any] = ["rr" if hint.round_robin else "ll", hint.rotate_after or ""]
    for rid, load in hint.loads.items():
        out += [rid, load]
    return out


def _config_json(config: StoreConfig) -> str:
    def limit(x: Any) -> dict[str, Any]:
        out = {"rps": x.rps, "burst": x.burst}
        for k in ("weight", "max_concurrent"):
            if hasattr(x, k):
                out[k] = getattr(x, k)
        return {k: v for k, v in out.items() if v is not None}

    doc = {
        "prios": list(_PRIORITIES),
        "pools": {
            name: {
                "capacity": p.capacity,
                "policy": p.full_policy,
                "weights": {pr: max(1, int(p.priority_weights.get(pr, 1))) for pr in _PRIORITIES},
            }
            for name, p in config.pools.items()
        },
        "tenants": {t: limit(c) for t, c in config.tenants.items()},
        "default_tenant": limit(config.default_tenant),
        "priorities": {p: limit(r) for p, r in config.priorities.items()},
        "retention_ms": config.event_log_retention_ms,
        "session_ttl_ms": config.session_ttl_ms,
    }
    return json.dumps(doc)
