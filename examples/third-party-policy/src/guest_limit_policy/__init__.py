"""A third-party native policy for llama-orch (entry point ``guest-limit``)."""

from __future__ import annotations

from llama_orch.policy_sdk.abi import (
    AdmissionSnapshot,
    Admit,
    Decision,
    Hook,
    NativePolicy,
    PlacementDecision,
    Reject,
    Rewrite,
    Snapshot,
)

__all__ = ["GuestLimitPolicy"]


class GuestLimitPolicy(NativePolicy):
    """Guests: no interactive work, and a token cap on their batch work."""

    def decide(self, hook: Hook, snapshot: Snapshot) -> Decision:
        if hook == "placement":
            return PlacementDecision(scores={})  # the host's own placement
        assert isinstance(snapshot, AdmissionSnapshot)
        task = snapshot.task
        if not task.tenant.startswith("guest"):
            return Admit()
        if task.priority == "interactive":
            return Reject(reason="guests may submit batch work only", status=403)
        cap = int(self.config.get("max_tokens", 64))
        if task.max_tokens > cap:
            return Rewrite(max_tokens=cap, reason="guest token cap")
        return Admit()
