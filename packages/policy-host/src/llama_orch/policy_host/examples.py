"""A native Python policy shipped with the host (entry point ``tenant-clamp-py``).

It does what the C tenant-clamp example does (``examples/policies/tenant_clamp.c``):
an ``interactive`` task whose tenant holds more than ``share_pct`` percent of
its pool's in-flight work is rewritten to ``batch``.
"""

from __future__ import annotations

from llama_orch.policy_sdk.abi import (
    AdmissionSnapshot,
    Admit,
    Decision,
    Hook,
    NativePolicy,
    PlacementDecision,
    Rewrite,
    Snapshot,
)

__all__ = ["TenantClampPolicy"]


class TenantClampPolicy(NativePolicy):
    def decide(self, hook: Hook, snapshot: Snapshot) -> Decision:
        if hook == "placement":
            return PlacementDecision(scores={})
        assert isinstance(snapshot, AdmissionSnapshot)
        share = int(self.config.get("share_pct", 50))
        pool_total = snapshot.pool.queued + snapshot.pool.running
        mine = snapshot.tenant.pool_in_flight
        if snapshot.task.priority == "interactive" and mine * 100 > share * max(pool_total, 1):
            return Rewrite(priority="batch", reason="tenant-over-share")
        return Admit()
