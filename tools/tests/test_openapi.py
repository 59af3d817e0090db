"""The OpenAPI contracts are valid and cannot drift from the code (ORCH-6003).

Wire structs live in ``llama_orch.core``; these tests compare them with
``contracts/openapi/{data,control}.yaml`` field by field and bound by bound.
"""

from __future__ import annotations

import json
import uuid
from functools import cache
from pathlib import Path
from typing import Any, get_args

import jsonschema
import msgspec
import pytest
import yaml
from llama_orch.core import api, errors, replica
from llama_orch.orchestratord import overview
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI = Path(__file__).resolve().parents[2] / "contracts" / "openapi"
DOCS = ("data.yaml", "control.yaml")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@cache
def _doc(name: str) -> dict[str, Any]:
    return yaml.safe_load((OPENAPI / name).read_text(encoding="utf-8"))


def _schema(name: str, doc: str = "data.yaml") -> dict[str, Any]:
    return _doc(doc)["components"]["schemas"][name]


def _validator(name: str, doc: str = "data.yaml") -> jsonschema.Draft202012Validator:
    uri = f"urn:llama-orch:{doc}"
    registry: Registry = Registry().with_resource(
        uri, Resource.from_contents(_doc(doc), default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"{uri}#/components/schemas/{name}"}, registry=registry
    )


def _fields(struct: type[msgspec.Struct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(struct)}


@pytest.mark.parametrize("name", [*DOCS, "pool-managerd.yaml"])
def test_document_is_valid_openapi_3_1(name: str) -> None:
    doc = _doc(name)
    assert doc["openapi"] == "3.1.0"
    validate(doc)


@pytest.mark.parametrize("name", DOCS)
def test_info_version_is_the_api_version(name: str) -> None:
    assert _doc(name)["info"]["version"] == api.API_VERSION


def test_capabilities_api_version_is_pinned_to_the_api_version() -> None:
    """ORCH-1601."""
    assert _schema("Capabilities", "control.yaml")["properties"]["api_version"]["const"] == (
        api.API_VERSION
    )


@pytest.mark.parametrize("name", DOCS)
def test_error_code_enum_is_every_error_code(name: str) -> None:
    """ORCH-2001/ORCH-2002: one envelope, every code."""
    enum = _schema("ErrorCode", name)["enum"]
    assert len(enum) == len(set(enum))
    assert set(enum) == {c.value for c in errors.ErrorCode}
    body = _schema("ErrorBody", name)
    assert set(body["properties"]) == _fields(errors.ErrorBody)
    assert body["properties"]["code"] == {"$ref": "#/components/schemas/ErrorCode"}


def test_error_body_is_identical_in_both_documents() -> None:
    assert _schema("ErrorBody") == _schema("ErrorBody", "control.yaml")
    assert _schema("ErrorCode") == _schema("ErrorCode", "control.yaml")


def test_error_envelopes_from_code_validate() -> None:
    validator = _validator("ErrorBody")
    for code in errors.ErrorCode:
        exc = errors.error_for_code(code)("x", pool_id="p", retry_after_ms=5, policy_label="reject")
        validator.validate(json.loads(msgspec.json.encode(exc.body())))


@pytest.mark.parametrize(
    ("schema", "struct", "doc"),
    [
        ("TaskRequest", api.TaskRequest, "data.yaml"),
        ("ChatMessage", api.ChatMessage, "data.yaml"),
        ("TaskAccepted", api.TaskAccepted, "data.yaml"),
        ("SessionInfo", api.SessionInfo, "data.yaml"),
        ("StartedEvent", api.StartedEvent, "data.yaml"),
        ("TokenEvent", api.TokenEvent, "data.yaml"),
        ("EmbeddingEvent", api.EmbeddingEvent, "data.yaml"),
        ("MetricsEvent", api.MetricsEvent, "data.yaml"),
        ("EndEvent", api.EndEvent, "data.yaml"),
        ("ErrorEvent", api.ErrorEvent, "data.yaml"),
        ("ReplicaState", replica.ReplicaState, "control.yaml"),
        ("AdminStatus", overview.Status, "control.yaml"),
        ("AdminPool", overview.OverviewPool, "control.yaml"),
        ("AdminReplica", overview.OverviewReplica, "control.yaml"),
        ("AdminTenant", overview.OverviewTenant, "control.yaml"),
        ("AdminTask", overview.TaskEntry, "control.yaml"),
        ("AdminSession", overview.SessionEntry, "control.yaml"),
        ("ReplicaState", replica.ReplicaState, "pool-managerd.yaml"),
    ],
)
def test_schema_properties_are_the_struct_fields(
    schema: str, struct: type[msgspec.Struct], doc: str
) -> None:
    assert set(_schema(schema, doc)["properties"]) == _fields(struct)


def test_sse_events_are_the_stream_event_union() -> None:
    """ORCH-1201/ORCH-1704: one documented payload per tag of StreamEvent."""
    op = _doc("data.yaml")["paths"]["/v1/tasks/{task_id}/stream"]["get"]
    events = op["responses"]["200"]["content"]["text/event-stream"]["x-sse-events"]
    tags = {t.__struct_config__.tag: t.__name__ for t in get_args(api.StreamEvent)}
    assert {k: v["$ref"].rsplit("/", 1)[1] for k, v in events.items()} == tags


# ---------------------------------------------------------------- TaskRequest bounds

_FACETS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "format",
    "default",
)


def _facets(prop: dict[str, Any]) -> dict[str, Any]:
    """Reduce a property schema (msgspec's anyOf style or the contract's type lists)."""
    out: dict[str, Any] = {"nullable": False}
    enum: set[Any] = set()
    for branch in prop.get("anyOf", [prop]):
        types = branch.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        if "null" in types or None in branch.get("enum", ()):
            out["nullable"] = True
        enum |= {v for v in branch.get("enum", ()) if v is not None}
        for key in _FACETS:
            if key in branch:
                out[key] = branch[key]
        if "default" in prop:
            out["default"] = prop["default"]
    if enum:
        out["enum"] = enum
    return out


def test_task_request_bounds_match_the_struct() -> None:
    """ORCH-1001: the contract states the same types and bounds the server enforces."""
    generated = msgspec.json.schema(api.TaskRequest)["$defs"]["TaskRequest"]
    contract = _schema("TaskRequest")
    assert contract["additionalProperties"] is False
    for name, prop in generated["properties"].items():
        want, got = _facets(prop), _facets(contract["properties"][name])
        if want.get("default") is None:
            want.pop("default", None)  # null defaults are implied by "null means absent"
            got.pop("default", None)
        assert got == want, name


_HI = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        ({"prompt": "hi"}, True),
        ({"workload": "chat", "messages": [{"role": "user", "content": "hi"}]}, True),
        ({"prompt": "hi", "max_tokens": 8, "seed": 7, "priority": "batch"}, True),
        ({}, False),
        ({"prompt": "hi", "messages": []}, False),
        ({"workload": "chat", "prompt": "hi"}, False),
        ({"prompt": "hi", "surprise": 1}, False),
        ({"prompt": "hi", "top_p": 0}, False),
        ({"prompt": "hi", "stop": ["a"] * 9}, False),
        ({"workload": "embedding", "inputs": ["a", "b"]}, True),
        ({"workload": "embedding", "inputs": []}, False),
        ({"workload": "embedding", "inputs": [""]}, False),
        ({"workload": "embedding", "prompt": "hi"}, False),
        ({"workload": "embedding", "inputs": ["a"], "max_tokens": 3}, False),
        ({"prompt": "hi", "inputs": ["a"]}, False),
        ({"workload": "chat", "messages": [_HI], "inputs": ["a"]}, False),
    ],
)
def test_task_request_examples(body: dict[str, Any], ok: bool) -> None:
    valid = _validator("TaskRequest").is_valid(body)
    assert valid is ok
    if ok:  # everything the contract accepts, the server's struct accepts too
        msgspec.json.decode(json.dumps(body), type=api.TaskRequest)


def test_encoded_events_validate_against_the_contract() -> None:
    samples: list[msgspec.Struct] = [
        api.StartedEvent(
            queue_position=0,
            predicted_start_ms=0,
            queue_wait_ms=1,
            pool_id="p",
            replica_id="p-0",
            engine="mock",
            engine_version="mock-1",
            model_digest="0" * 64,
        ),
        api.TokenEvent("Hi", 0),
        api.EmbeddingEvent(index=0, vector=[0.25, -1.0]),
        api.MetricsEvent(queue_depth=1, tokens_per_s=12.5),
        api.EndEvent(tokens_out=1, decode_ms=3, reason="length"),
        api.ErrorEvent(code="WORKER_RESET", message="lost", retriable=True),
        api.TaskAccepted(str(uuid.uuid4()), 0, 0, 0),
        api.SessionInfo(
            session_id=str(uuid.uuid4()),
            ttl_ms_remaining=1,
            turns=1,
            max_turns=8,
            kv_bytes=0,
            kv_warmth=False,
            tokens_in=1,
            tokens_out=1,
        ),
    ]
    for sample in samples:
        payload = json.loads(msgspec.json.encode(sample))
        payload.pop("type", None)  # the tag travels as the SSE event name
        _validator(type(sample).__name__).validate(payload)
    state = replica.ReplicaState(pool_id="p", replica_id="p-0", engine="mock", status="ready")
    _validator("ReplicaState", "control.yaml").validate(json.loads(msgspec.json.encode(state)))


# ---------------------------------------------------------------- headers


def _responses(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    doc = _doc(name)
    shared = doc["components"].get("responses", {})
    out = []
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            for status, resp in item[method]["responses"].items():
                if "$ref" in resp:
                    resp = shared[resp["$ref"].rsplit("/", 1)[1]]
                out.append((f"{method.upper()} {path}", status, resp))
    return out


@pytest.mark.parametrize("name", DOCS)
def test_every_response_but_204_has_a_correlation_id(name: str) -> None:
    """ORCH-2003."""
    for where, status, resp in _responses(name):
        has = "X-Correlation-Id" in resp.get("headers", {})
        assert has is (status != "204"), f"{where} {status}"


def test_backpressure_contract() -> None:
    """ORCH-1107: Retry-After and X-Backoff-Ms headers, policy_label in the body."""
    resp = _doc("data.yaml")["components"]["responses"]["Backpressure"]
    headers = resp["headers"]
    assert {"Retry-After", "X-Backoff-Ms", "X-Queue-Position"} <= set(headers)
    required = resp["content"]["application/json"]["schema"]["allOf"][1]["required"]
    assert set(required) == {"policy_label", "retriable", "retry_after_ms"}
    _validator("ErrorBody").validate(resp["content"]["application/json"]["example"])


def test_cli_json_schemas_are_current() -> None:
    """ORCH-5114: packages/cli/schemas/ is generated from control.yaml and committed."""
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[1] / "gen_cli_schemas.py"
    done = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
