"""The ``policies:`` section of the config: which policies run at which hook (ORCH-8540).

A policy is a WebAssembly module (``path`` pinned by ``sha256``) or a native
Python plugin (``entry_point``, a name in the ``llama_orch.policies`` group,
ORCH-0006). Each hook names one policy and says what an error means:
``open`` (decide as if there were no policy) or ``closed`` (refuse).
Capabilities are off unless granted here: no WASI, no log, no fetch.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = ["FetchGrant", "HookConfig", "PoliciesConfig", "PolicyModule", "check_policies"]

PolicyName = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


class FetchGrant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Mediated fetch (ORCH-8560): only URLs starting with an ``allow`` prefix."""

    allow: Annotated[list[Annotated[str, Meta(pattern=r"^https?://")]], Meta(min_length=1)]
    max_bytes: Annotated[int, Meta(ge=1, le=1 << 20)] = 65536
    timeout_ms: Annotated[int, Meta(ge=1, le=10_000)] = 500


class PolicyModule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: PolicyName
    # A .wasm (or .wat) file pinned by the sha256 of its bytes ...
    path: str | None = None
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    # ... or a native Python policy by its entry-point name.
    entry_point: str | None = None
    # Per call; 0 = fuel off (epoch only). 1M is ~35x a C decision (28,871) and ~6x the
    # Python component's worst (168k), and burns in ~3.3 ms of CPU on a 2-core AMD EPYC VM
    # (2M took 6.4 ms there: over the 5 ms a spinning policy may run, ORCH-8512's test).
    fuel: Annotated[int, Meta(ge=0)] = 1_000_000
    memory_mib: Annotated[int, Meta(ge=1, le=1024)] = 16
    wasi: bool = False  # link WASI (no preopens, env, args or stdio)
    log: bool = False  # grant llorch.log
    fetch: FetchGrant | None = None
    # Conformance vectors a new version must pass before it replaces a running one.
    vectors: str | None = None
    config: dict[str, str | int | float | bool] = {}  # given to native policies


class HookConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    policy: PolicyName
    on_error: Literal["open", "closed"] = "open"
    # Wall-clock epoch deadline per call; fuel stops CPU-bound loops far sooner, this
    # bounds the rest (a preempted process, fuel off) without firing on a busy host.
    budget_ms: Annotated[float, Meta(gt=0, le=1000)] = 20.0


class PoliciesConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    modules: list[PolicyModule] = []
    admission: HookConfig | None = None
    placement: HookConfig | None = None
    # Labels per replica_id, shown to placement policies.
    replica_labels: dict[str, dict[str, str]] = {}
    epoch_tick_ms: Annotated[float, Meta(ge=0.5, le=100)] = 1.0
    cache_dir: str | None = None  # compiled modules; default ~/.cache/llama-orch/policies


def check_policies(cfg: PoliciesConfig) -> None:
    """Names unique, one kind per module, every hook names a module (ORCH-8540)."""
    names = [m.name for m in cfg.modules]
    if len(names) != len(set(names)):
        raise msgspec.ValidationError(f"policy names must be unique, got {names}")
    for m in cfg.modules:
        if (m.path is None) == (m.entry_point is None):
            raise msgspec.ValidationError(f"policy {m.name}: give exactly one of path, entry_point")
        if m.path is not None and m.sha256 is None:
            raise msgspec.ValidationError(f"policy {m.name}: a module path needs its sha256")
    for hook in ("admission", "placement"):
        h = getattr(cfg, hook)
        if h is not None and h.policy not in names:
            raise msgspec.ValidationError(f"policies.{hook} names unknown policy {h.policy!r}")
