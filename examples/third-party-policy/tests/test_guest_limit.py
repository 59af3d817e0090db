"""The third-party policy, discovered by entry point and run by llama-orch's host."""

from __future__ import annotations

from pathlib import Path

from llama_orch.core.policy_config import HookConfig, PoliciesConfig, PolicyModule
from llama_orch.policy_host import PolicyHost, available_policies
from llama_orch.policy_sdk.abi import Reject, decode_snapshot
from llama_orch.policy_sdk.cli import main

VECTORS = Path(__file__).parent / "vectors"


def test_discovered_by_entry_point() -> None:
    assert available_policies()["guest-limit"] == "guest_limit_policy:GuestLimitPolicy"


def test_vectors_pass_with_the_llorch_policy_tool() -> None:
    assert main(["test", "native:guest-limit", str(VECTORS)]) == 0


def test_runs_in_the_host_as_orchestratord_configures_it() -> None:
    cfg = PoliciesConfig(
        modules=[PolicyModule(name="guests", entry_point="guest-limit")],
        admission=HookConfig(policy="guests"),
    )
    host = PolicyHost(cfg)
    try:
        snap = decode_snapshot(
            "admission",
            (VECTORS / "02_guest_interactive_403.json")
            .read_bytes()
            .split(b'"snapshot": ')[1]
            .rsplit(b',\n  "expect"', 1)[0],
        )
        res = host.admission(snap)  # type: ignore[arg-type]
        assert res is not None and isinstance(res.decision, Reject)
        assert res.decision.status == 403 and res.policy == "guests"
        assert host.calls["guests", "admission", "reject"] == 1
    finally:
        host.close()
