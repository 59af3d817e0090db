"""Conformance vectors: snapshots with the decision a policy must give (ORCH-8532).

A vector is one JSON file::

    {"hook": "admission", "snapshot": {...}, "expect": {"action": "admit"}}
    {"hook": "placement", "snapshot": {...}, "expect_replica": "r1"}

``expect`` must equal the decision exactly (after strict decoding);
``expect_replica`` is the replica the host would choose from the scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import msgspec
from llama_orch.policy_sdk.abi import (
    Decision,
    DecisionError,
    Hook,
    PlacementDecision,
    PlacementSnapshot,
    Snapshot,
    decode_decision,
    decode_snapshot,
)

from .errors import PolicyCallError

__all__ = ["VectorReport", "run_vectors"]


class _Runner(Protocol):
    def decide(self, hook: Hook, snapshot: Snapshot, budget_ms: float) -> Decision: ...


class Vector(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    hook: str
    snapshot: msgspec.Raw
    expect: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty: not given
    expect_replica: str | None = None
    budget_ms: float = 50.0


@dataclass
class VectorReport:
    passed: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def choose(snapshot: PlacementSnapshot, d: PlacementDecision) -> str | None:
    best: str | None = None
    for r in snapshot.replicas:
        s = d.scores.get(r.replica_id)
        if s is not None and (best is None or s > d.scores[best]):
            best = r.replica_id
    return best


def run_vectors(runner: _Runner, directory: Path) -> VectorReport:
    report = VectorReport()
    files = sorted(directory.glob("*.json"))
    if not files:
        report.failures.append((str(directory), "no *.json vectors"))
    for f in files:
        name = f.name
        try:
            v = msgspec.json.decode(f.read_bytes(), type=Vector)
            snap = decode_snapshot(v.hook, v.snapshot)
            expect: Any = decode_decision(v.hook, v.expect) if len(v.expect) else None
        except (msgspec.ValidationError, msgspec.DecodeError, DecisionError, KeyError) as exc:
            report.failures.append((name, f"bad vector: {exc}"))
            continue
        try:
            # decode_snapshot accepted v.hook, so it is one of the hooks
            got = runner.decide(cast(Hook, v.hook), snap, v.budget_ms)
        except PolicyCallError as exc:
            report.failures.append((name, str(exc)))
            continue
        if expect is not None and got != expect:
            report.failures.append((name, f"expected {_j(expect)}, got {_j(got)}"))
        elif v.expect_replica is not None:
            assert isinstance(snap, PlacementSnapshot) and isinstance(got, PlacementDecision)
            chosen = choose(snap, got)
            if chosen != v.expect_replica:
                report.failures.append((name, f"expected replica {v.expect_replica}, got {chosen}"))
            else:
                report.passed.append(name)
        else:
            report.passed.append(name)
    return report


def _j(d: Any) -> str:
    return msgspec.json.encode(d).decode()
