"""Native Python policies: plugins in the ``llama_orch.policies`` group (ORCH-0006, ORCH-8517).

They implement the same protocol as WebAssembly policies (``decide(hook,
snapshot) -> decision``) but run in-process and unsandboxed: only the
operator installs them. Their decisions are checked against the hook's type
like any module output.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from llama_orch.core.policy_config import PolicyModule
from llama_orch.policy_sdk.abi import (
    ENTRY_POINT_GROUP,
    Admit,
    Decision,
    Hook,
    NativePolicy,
    PlacementDecision,
    Reject,
    Rewrite,
    Snapshot,
)

from .errors import PolicyCallError, PolicyLoadError

__all__ = ["NativeRunner", "available_policies", "load_native"]

_TYPES: dict[str, tuple[type, ...]] = {
    "admission": (Admit, Reject, Rewrite),
    "placement": (PlacementDecision,),
}


def available_policies() -> dict[str, str]:
    """Entry-point name → ``module:Class`` of every installed native policy."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_native(name: str, entry_point: str) -> type[NativePolicy]:
    matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == entry_point]
    if not matches:
        raise PolicyLoadError(
            name, f"no native policy {entry_point!r} in group {ENTRY_POINT_GROUP}"
        )
    try:
        cls: Any = matches[0].load()
    except Exception as exc:  # a broken plugin must fail at load, typed
        raise PolicyLoadError(name, f"entry point {entry_point!r} fails to load: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, NativePolicy)):
        raise PolicyLoadError(name, f"{entry_point!r} is not a NativePolicy subclass")
    return cls


class NativeRunner:
    kind = "native"

    def __init__(self, spec: PolicyModule) -> None:
        assert spec.entry_point is not None
        self.name = spec.name
        self.spec = spec
        self.sha256 = None
        cls = load_native(spec.name, spec.entry_point)
        try:
            self.policy = cls(dict(spec.config))
        except Exception as exc:
            raise PolicyLoadError(spec.name, f"constructor failed: {exc}") from exc

    def decide(self, hook: Hook, snapshot: Snapshot, budget_ms: float) -> Decision:
        try:
            decision = self.policy.decide(hook, snapshot)
        except Exception as exc:
            raise PolicyCallError(self.name, "exception", repr(exc)) from exc
        if not isinstance(decision, _TYPES[hook]):
            raise PolicyCallError(self.name, "output", f"not a {hook} decision: {decision!r}")
        return decision

    def discard(self) -> None:
        pass

    def close(self) -> None:
        pass
