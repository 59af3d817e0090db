"""ABI v1 types: strict decoding and the shipped JSON Schemas (ORCH-8502, ORCH-8503)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from llama_orch.policy_sdk.abi import (
    ABI_VERSION,
    HOOK_IDS,
    AdmissionSnapshot,
    Admit,
    DecisionError,
    NativePolicy,
    PlacementDecision,
    Reject,
    Rewrite,
    decode_decision,
    decode_snapshot,
    encode,
)
from llama_orch.policy_sdk.cli import main, write_schemas

SCHEMAS = Path(str(resources.files("llama_orch.policy_sdk") / "schemas"))


def test_abi_constants() -> None:
    assert ABI_VERSION == 1 and HOOK_IDS == {"admission": 1, "placement": 2}


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b'{"action":"admit"}', Admit()),
        (
            b'{"action":"reject","reason":"full","retry_after_ms":10}',
            Reject(reason="full", retry_after_ms=10),
        ),
        (b'{"action":"reject","reason":"no","status":403}', Reject(reason="no", status=403)),
        (b'{"action":"rewrite","priority":"batch"}', Rewrite(priority="batch")),
    ],
)
def test_admission_decisions_decode(raw: bytes, want: object) -> None:
    """ORCH-8502: the `action` tag selects the type."""
    assert decode_decision("admission", raw) == want


@pytest.mark.parametrize(
    "raw",
    [
        b'{"action":"maybe"}',  # unknown tag
        b'{"action":"admit","extra":1}',  # unknown field
        b'{"action":"reject"}',  # missing reason
        b'{"action":"reject","reason":"x","status":500}',  # not 429/403
        b'{"action":"rewrite","priority":"urgent"}',  # no such priority
        b'{"action":"rewrite","max_tokens":0}',  # below 1
        b"not json",
        b"",
    ],
)
def test_malformed_admission_decisions_are_typed_errors(raw: bytes) -> None:
    """ORCH-8502, ORCH-8504."""
    with pytest.raises(DecisionError):
        decode_decision("admission", raw)


def test_placement_decision_is_strict() -> None:
    assert decode_decision("placement", b'{"scores":{"r0":1.5}}') == PlacementDecision(
        scores={"r0": 1.5}
    )
    for raw in (b'{"scores":{"r0":"high"}}', b'{"scores":{},"pick":"r0"}', b"{}"):
        with pytest.raises(DecisionError):
            decode_decision("placement", raw)


def test_snapshot_round_trips() -> None:
    raw = (
        b'{"task":{"task_id":"t","tenant":"a","priority":"batch","pool_id":"p",'
        b'"max_tokens":3},"pool":{"pool_id":"p","queued":1,"capacity":4,"running":1,'
        b'"slots":1,"ready_replicas":1},"tenant":{"tenant":"a","in_flight":1,"pool_in_flight":1}}'
    )
    snap = decode_snapshot("admission", raw)
    assert isinstance(snap, AdmissionSnapshot) and snap.abi == 1 and snap.hook == "admission"
    assert decode_snapshot("admission", encode(snap)) == snap


def test_shipped_schemas_match_the_types(tmp_path: Path) -> None:
    """ORCH-8503: `llorch-policy schemas` regenerates exactly what the SDK ships."""
    written = write_schemas(tmp_path)
    assert len(written) == 4
    for path in written:
        shipped = SCHEMAS / path.name
        assert shipped.is_file(), f"{path.name} is not shipped"
        assert json.loads(shipped.read_text()) == json.loads(path.read_text()), (
            f"{path.name} drifted: run llorch-policy schemas {SCHEMAS}"
        )


def test_schemas_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", str(tmp_path)]) == 0
    assert "admission.decision.schema.json" in capsys.readouterr().out


def test_native_policy_base_must_be_overridden() -> None:
    class Nothing(NativePolicy):
        pass

    p = Nothing({"k": 1})
    assert p.config == {"k": 1}
    with pytest.raises(NotImplementedError):
        p.decide(
            "admission",
            decode_snapshot(
                "placement",
                b'{"task":{"task_id":"t",'
                b'"tenant":"a","priority":"batch","pool_id":"p","max_tokens":1},"replicas":[]}',
            ),
        )
