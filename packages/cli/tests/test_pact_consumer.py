"""Pact consumer tests: the CLI's typed client ``OrchClient`` against a Pact mock
of orchestratord (ORCH-6009).

Each test records what the client sends and needs back; the interactions are
merged into ``contracts/pacts/llorch-cli-orchestratord.json`` (committed),
which ``packages/orchestratord/tests/test_app_pact_provider.py`` replays against
the real orchestratord. Response bodies use type matchers, so the contract
pins field names and types, not the values of one run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from llama_orch.cli.client import OrchClient
from llama_orch.cli.errors import ApiError
from llama_orch.core.api import TaskRequest
from pact import Pact, match

PACT_DIR = Path(__file__).resolve().parents[3] / "contracts" / "pacts"
# the provider verifies the file these tests merge into: one worker, these first (ORCH-6240)
pytestmark = pytest.mark.xdist_group("pact")
TASK_ID = "6f1c1a9e-3b5d-4c2a-9e8f-0a1b2c3d4e5f"
UNKNOWN_TASK_ID = "00000000-0000-4000-8000-000000000000"
SESSION_ID = "9d3f2b7c-1e4a-4b6d-8c9e-2f3a4b5c6d7e"
POOL_ID = "default"

ERROR_BODY = {"code": match.str("INVALID_PARAMS"), "message": match.str("bad field")}


def wire(**fields: Any) -> dict[str, Any]:
    """The exact body ``OrchClient.submit(**fields)`` sends: every TaskRequest field."""
    return msgspec.to_builtins(msgspec.convert(fields, TaskRequest))


@pytest.fixture
def pact() -> Iterator[Pact]:
    pact = Pact("llorch-cli", "orchestratord").with_specification("V4")
    yield pact
    # Merge (not overwrite): every test contributes its own interactions.
    pact.write_file(PACT_DIR, overwrite=False)


async def test_submit_accepted(pact: Pact) -> None:
    (
        pact.upon_receiving("a completion task submission")
        .given("pool default is ready")
        .with_request("POST", "/v1/tasks")
        .with_header("Content-Type", "application/json")
        .with_body(
            wire(prompt="Say hello.", max_tokens=8, seed=7),
            content_type="application/json",
        )
        .will_respond_with(202)
        .with_body(
            {
                "task_id": match.uuid("1c9e7a62-1111-4f0e-9a3b-5d6c7e8f9a0b"),
                "queue_position": match.int(0),
                "predicted_start_ms": match.int(0),
                "backoff_ms": match.int(0),
            },
            content_type="application/json",
        )
    )
    with pact.serve() as srv:
        async with OrchClient(str(srv.url)) as client:
            accepted = await client.submit(prompt="Say hello.", max_tokens=8, seed=7)
    assert accepted.queue_position == 0 and len(accepted.task_id) == 36


async def test_submit_rejected_with_invalid_params(pact: Pact) -> None:
    (
        pact.upon_receiving("a submission with prompt and messages both set")
        .given("pool default is ready")
        .with_request("POST", "/v1/tasks")
        .with_header("Content-Type", "application/json")
        .with_body(
            wire(workload="chat", prompt="x", messages=[{"role": "user", "content": "x"}]),
            content_type="application/json",
        )
        .will_respond_with(400)
        .with_body(ERROR_BODY, content_type="application/json")
    )
    with pact.serve() as srv:
        async with OrchClient(str(srv.url)) as client:
            with pytest.raises(ApiError) as err:
                await client.submit(
                    workload="chat", prompt="x", messages=[{"role": "user", "content": "x"}]
                )
    assert err.value.status == 400 and err.value.code == "INVALID_PARAMS"


async def test_task_status(pact: Pact) -> None:
    (
        pact.upon_receiving("a status request for a known task")
        .given("a task exists", {"task_id": TASK_ID})
        .with_request("GET", f"/v1/tasks/{TASK_ID}")
        .will_respond_with(200)
        .with_body(
            {
                "task_id": TASK_ID,
                "state": match.regex(
                    "completed", regex="^(queued|running|completed|failed|canceled)$"
                ),
                "pool_id": match.str(POOL_ID),
                "replica_id": match.str("default-e0"),
                "queue_position": None,
                "tokens_out": match.int(8),
                "created_ms": match.int(1_700_000_000_000),
            },
            content_type="application/json",
        )
    )
    with pact.serve() as srv:
        async with OrchClient(str(srv.url)) as client:
            status = await client.task(TASK_ID)
    assert status.task_id == TASK_ID and status.state == "completed"


async def test_unknown_task_is_not_found(pact: Pact) -> None:
    (
        pact.upon_receiving("a status request for an unknown task")
        .with_request("GET", f"/v1/tasks/{UNKNOWN_TASK_ID}")
        .will_respond_with(404)
        .with_body(
            {"code": "NOT_FOUND", "message": match.str("unknown task")},
            content_type="application/json",
        )
    )
    with pact.serve() as srv:
        async with OrchClient(str(srv.url)) as client:
            with pytest.raises(ApiError) as err:
                await client.task(UNKNOWN_TASK_ID)
    assert err.value.status == 404 and err.value.code == "NOT_FOUND"


async def test_cancel(pact: Pact) -> None:
    (
        pact.upon_receiving("a cancel of a known task")
        .given("a task exists", {"task_id": TASK_ID})
        .with_request("POST", f"/v1/tasks/{TASK_ID}/cancel")
        .will_respond_with(204)
    )
    with pact.serve() as srv:
        async with OrchClient(str(srv.url)) as client:
            assert await client.cancel(TASK_ID) is None


async def test_session_info_and_delete(pact: Pact) -> None:
    session_body = {
        "session_id": SESSION_ID,
        "ttl_ms_remaining": match.int(600_000),
        "turns": match.int(1),
        "max_turns": match.int(8),
        "kv_bytes": match.int(0),
        "kv_warmth": match.bool(False),
        "tokens_in": match.int(4),
        "tokens_out": match.int(8),
    }
    (
        pact.upon_receiving("a request for a live session")
        .given("a session exists", {"session_id": SESSION_ID})
        .with_request("GET", f"/v1/sessions/{SESSION_ID}")
        .will_respond_with(200)
        .with_body(session_body, content_type="application/json")
    )
    (
        pact.upon_receiving("a delete of a live session")
        .given("a session exists", {"session_id": SESSION_ID})
        .with_request("DELETE", f"/v1/sessions/{SESSION_ID}")
        .will_respond_with(204)
    )
    with pact.serve() as srv:
        async with OrchClient(str(srv.url)) as client:
            info = await client.session(SESSION_ID)
            await client.delete_session(SESSION_ID)
    assert info.session_id == SESSION_ID


async def test_capabilities(pact: Pact) -> None:
    (
        pact.upon_receiving("a capabilities request")
        .given("pool default is ready")
        .with_request("GET", "/v1/capabilities")
        .will_respond_with(200)
        .with_body(
            {
                "api_version": match.str("1.0.0"),
                "engines": match.each_like(match.str("llamacpp-http")),
                "workloads": match.each_like(
                    match.regex("chat", regex="^(completion|chat|embedding)$")
                ),
                "cpu_inference": match.bool(False),
                "allow_cpu_inference": match.bool(False),
                "pools": match.each_like(
                    {
                        "id": match.str(POOL_ID),
                        "engine": match.str("llamacpp-http"),
                        "model_ref": match.str("pypi:qwen2.5-coder-0.5b-instruct-q4_k_m"),
                        "ctx_max": match.int(2048),
                        "slots": match.int(2),
                        "replicas_ready": match.int(1),
                    }
                ),
                "limits": {
                    "queue_capacity": match.int(64),
                    "full_policy": match.regex(
                        "reject", regex="^(reject|drop-lru|shed-low-priority)$"
                    ),
                    "max_tokens_limit": match.int(2048),
                },
                "features": match.each_like(match.str("sse-resume")),
            },
            content_type="application/json",
        )
    )
    with pact.serve() as srv:
        async with OrchClient(str(srv.url)) as client:
            caps = await client.capabilities()
    assert caps.pools[0].id == POOL_ID


async def test_pool_health(pact: Pact) -> None:
    (
        pact.upon_receiving("a health request for a ready pool")
        .given("pool default is ready")
        .with_request("GET", f"/v1/pools/{POOL_ID}/health")
        .will_respond_with(200)
        .with_body(
            {
                "pool_id": POOL_ID,
                "live": match.bool(True),
                "ready": True,
                "draining": match.bool(False),
                "last_error": None,
                "queue_depth": match.int(0),
                "replicas": match.each_like(
                    {
                        "pool_id": POOL_ID,
                        "replica_id": match.str("default-e0"),
                        "engine": match.str("llamacpp-http"),
                        "status": "ready",
                        "slots": match.int(2),
                        "ctx": match.int(2048),
                    }
                ),
            },
            content_type="application/json",
        )
    )
    with pact.serve() as srv:
        async with OrchClient(str(srv.url)) as client:
            health = await client.pool_health(POOL_ID)
    assert health.ready and health.replicas[0]["status"] == "ready"
