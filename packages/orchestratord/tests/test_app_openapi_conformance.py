"""OpenAPI conformance: every documented operation against a live orchestratord
(ORCH-6010).

The test walks every operation of ``contracts/openapi/data.yaml`` and
``control.yaml``. For each one it drives the real HTTP API (mock adapter
endpoints) into the documented outcomes, then checks that the status code is
one the operation documents, that the body validates against the documented
schema (JSON Schema 2020-12, ``$ref`` resolved inside the document), that
every required documented header is present, and, for the SSE stream, that
every event's payload validates against its ``x-sse-events`` schema. Every
(operation, status) pair is either exercised here or listed in
``NOT_TRIGGERED`` with the reason, so a new operation or status code in a
document fails this test until it is covered.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml
from jsonschema import Draft202012Validator
from llama_orch.core.config import Config
from llama_orch.core.sse import SSEParser
from llama_orch.orchestratord.auth import hash_key
from llama_orch.orchestratord.serve import serve
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI = Path(__file__).resolve().parents[3] / "contracts" / "openapi"
DOCS = {
    name: yaml.safe_load((OPENAPI / f"{name}.yaml").read_text()) for name in ("data", "control")
}
METHODS = ("get", "put", "post", "delete", "patch")

# (operationId, status) pairs a mock-backed orchestratord cannot produce on demand.
NOT_TRIGGERED = {
    ("submitTask", "500"): "INTERNAL needs an unexpected server fault",
    ("reloadPool", "200"): "needs the embedded pool manager and a second real model",
    ("reloadPool", "403"): "UNTRUSTED_ARTIFACT needs the embedded pool manager",
    ("resetPool", "200"): "needs a pool manager; test_remote.py checks it",
    ("drainPool", "503"): "needs a remote pool-managerd; test_remote.py checks it",
}


def _operations() -> dict[str, tuple[str, str, str, dict[str, Any]]]:
    """operationId → (document, method, path template, operation)."""
    ops = {}
    for name, doc in DOCS.items():
        for path, item in doc["paths"].items():
            for method in METHODS:
                if method in item:
                    op = item[method]
                    ops[op["operationId"]] = (name, method.upper(), path, op)
    return ops


OPERATIONS = _operations()
_REGISTRY = Registry().with_resources(
    (f"urn:{name}", Resource(contents=doc, specification=DRAFT202012)) for name, doc in DOCS.items()
)


def _deref(doc: str, node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = DOCS[doc]
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _validator(doc: str, schema: dict[str, Any]) -> Draft202012Validator:
    # Rewrite local refs so they resolve against the registered document.
    raw = msgspec.json.encode(schema).replace(b'"$ref":"#/', f'"$ref":"urn:{doc}#/'.encode())
    return Draft202012Validator(msgspec.json.decode(raw), registry=_REGISTRY)


def check_response(
    op_id: str, status: int, headers: Any, body: bytes, problems: list[str]
) -> dict[str, Any] | None:
    """Validate one answer against the operation's document; return its response object."""
    doc, _method, _path, op = OPERATIONS[op_id]
    documented = op["responses"]
    if str(status) not in documented:
        problems.append(f"{op_id}: status {status} not documented ({sorted(documented)})")
        return None
    response = _deref(doc, documented[str(status)])
    for name, header in response.get("headers", {}).items():
        header = _deref(doc, header)
        if header.get("required") and name not in headers:
            problems.append(f"{op_id} {status}: required header {name} missing")
    content = response.get("content", {})
    if not content:
        if body:
            problems.append(f"{op_id} {status}: body {body[:80]!r} where none is documented")
        return response
    ctype = headers.get("Content-Type", "").split(";")[0]
    if ctype not in content:
        problems.append(f"{op_id} {status}: Content-Type {ctype!r} not in {sorted(content)}")
        return response
    if ctype == "application/json":
        errors = sorted(
            _validator(doc, content[ctype]["schema"]).iter_errors(msgspec.json.decode(body)),
            key=str,
        )
        problems += [f"{op_id} {status}: {e.json_path}: {e.message}" for e in errors]
    elif ctype == "text/event-stream":
        schemas = content[ctype]["x-sse-events"]
        parser = SSEParser()
        for msg in parser.feed(body):
            if msg.event not in schemas:
                problems.append(f"{op_id}: undocumented SSE event {msg.event!r}")
                continue
            data = msgspec.json.decode(msg.data)
            for e in _validator(doc, schemas[msg.event]).iter_errors(data):
                problems.append(f"{op_id} event {msg.event}: {e.json_path}: {e.message}")
    return response


@contextlib.asynccontextmanager
async def _orchestratord(config: Config) -> AsyncIterator[str]:
    stop = asyncio.Event()
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            config, shutdown_trigger=stop.wait, on_listening=lambda u, _o: listening.set_result(u)
        )
    )
    try:
        done, _ = await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        yield listening.result()
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)


TENANT_KEY = "llo_conformance-tenant-" + "t" * 32
ADMIN_KEY = "llo_conformance-admin-" + "a" * 32
DATA_OPS = {"submitTask", "getTask", "streamTask", "cancelTask", "getSession", "deleteSession"}
EITHER_ROLE = {"getCapabilities", "getPoolHealth"}
ADMIN_VIEWS = (
    "getAdminStatus",
    "listAdminTasks",
    "getAdminTask",
    "streamAdminTask",
    "cancelAdminTask",
    "listAdminSessions",
)


def _config() -> Config:
    def mock(pool_id: str, **options: Any) -> dict[str, Any]:
        return {
            "id": pool_id,
            "engine": "mock",
            "model": "mock-model",
            "endpoints": ["mock://0"],
            "adapter_options": options,
            "startup_timeout_s": 60,
        }

    return msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "admission": {"queue_capacity": 1},
            "auth": {
                "keys": [
                    {"id": "t", "role": "tenant", "tenant": "alpha", "hash": hash_key(TENANT_KEY)},
                    {"id": "a", "role": "admin", "hash": hash_key(ADMIN_KEY)},
                ]
            },
            "limits": {"max_body_bytes": 4096, "max_streams_per_tenant": 1},
            "pools": [
                mock("main", token_delay_ms=5, eos_after=6),
                mock("slow", token_delay_ms=100),
                mock("unready", fail="unready"),
                mock("drainme", token_delay_ms=5),
            ],
        },
        Config,
    )


class Walk:
    """Calls operations by operationId and records what was exercised."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http
        self.seen: set[tuple[str, str]] = set()
        self.problems: list[str] = []

    async def call(
        self,
        op_id: str,
        expect: int,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = "",
        query: dict[str, str] | None = None,
    ) -> Any:
        """``key=""``: the right role's key for the operation; ``None``: no key."""
        _, method, path, _ = OPERATIONS[op_id]
        url = self.url + path.format(**(params or {}))
        if key == "":
            key = TENANT_KEY if op_id in DATA_OPS | EITHER_ROLE else ADMIN_KEY
        headers = dict(headers or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.http.request(
            method, url, json=json, data=data, headers=headers, params=query
        ) as r:
            body = await r.read()
            status, resp_headers = r.status, r.headers
        if status != expect:
            self.problems.append(f"{op_id}: expected {expect}, got {status}: {body[:200]!r}")
        check_response(op_id, status, resp_headers, body, self.problems)
        self.seen.add((op_id, str(status)))
        ctype = resp_headers.get("Content-Type", "")
        return msgspec.json.decode(body) if body and "json" in ctype else body


async def _wait_ready(walk: Walk, pool: str) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for _ in range(400):
        async with walk.http.get(f"{walk.url}/v1/pools/{pool}/health", headers=auth) as r:
            if (await r.json())["ready"]:
                return
        await asyncio.sleep(0.05)
    pytest.fail(f"pool {pool} never ready")


async def _wait_running(walk: Walk, task_id: str) -> None:
    auth = {"Authorization": f"Bearer {TENANT_KEY}"}
    for _ in range(400):
        async with walk.http.get(f"{walk.url}/v1/tasks/{task_id}", headers=auth) as r:
            if (await r.json())["state"] == "running":
                return
        await asyncio.sleep(0.05)
    pytest.fail(f"task {task_id} never started")


async def test_every_operation_answers_as_documented():
    """ORCH-6010: status codes, headers and bodies of every operation match the documents."""
    async with _orchestratord(_config()) as url, aiohttp.ClientSession() as http:
        w = Walk(url, http)
        for pool in ("main", "slow", "drainme"):
            await _wait_ready(w, pool)
        missing = str(uuid.uuid4())
        # -- data plane
        sid = str(uuid.uuid4())
        task = await w.call(
            "submitTask",
            202,
            json={"prompt": "hi", "max_tokens": 4, "pool_id": "main", "session_id": sid},
        )
        tid = task["task_id"]
        await w.call("submitTask", 400, json={"prompt": 1})
        sse = {"Accept": "text/event-stream"}  # one request per task (ORCH-2710)
        streamed = await w.call(
            "submitTask", 200, json={"prompt": "hi", "max_tokens": 2}, headers=sse
        )
        assert b"event: end" in streamed
        await w.call("streamTask", 200, params={"task_id": tid})
        await w.call("streamTask", 200, params={"task_id": tid}, headers={"Last-Event-ID": "1"})
        await w.call("streamTask", 400, params={"task_id": tid}, headers={"Last-Event-ID": "x"})
        await w.call("streamTask", 404, params={"task_id": missing})
        await w.call("getTask", 200, params={"task_id": tid})
        await w.call("getTask", 404, params={"task_id": missing})
        await w.call("cancelTask", 204, params={"task_id": tid})
        await w.call("cancelTask", 404, params={"task_id": missing})
        await w.call("getSession", 200, params={"session_id": sid})
        await w.call("getSession", 404, params={"session_id": missing})
        await w.call("deleteSession", 204, params={"session_id": sid})
        await w.call("deleteSession", 404, params={"session_id": sid})
        # -- auth (ORCH-8003): every operation without a key, data ops with an admin key
        params = {"task_id": tid, "session_id": sid, "pool_id": "main"}
        for op_id in OPERATIONS:
            await w.call(op_id, 431, params=params, headers={"X-Pad": "p" * 20_000})
            await w.call(op_id, 401, params=params, key=None)
            await w.call(op_id, 401, params=params, key="llo_not-a-configured-key-" + "x" * 20)
        for op_id in DATA_OPS:
            await w.call(op_id, 403, params=params, key=ADMIN_KEY, json={"prompt": "x"})
        for op_id in (
            "drainPool",
            "resetPool",
            "getReplicaSets",
            "getMetrics",
            "reloadPolicies",
            "getPolicies",
            *ADMIN_VIEWS,
        ):
            await w.call(op_id, 403, params=params, key=TENANT_KEY, json={})
        big = b'{"prompt": "' + b"x" * 5000 + b'"}'
        for op_id in ("submitTask", "drainPool", "reloadPool"):
            await w.call(op_id, 413, params=params, data=big)
        # backpressure: one running + one queued fill pool "slow" (capacity 1)
        slow = {"prompt": "x", "max_tokens": 500, "pool_id": "slow"}
        running = await w.call("submitTask", 202, json=slow)
        await _wait_running(w, running["task_id"])
        # one open stream is the tenant's limit here (ORCH-8013): a second one is a 429
        auth = {"Authorization": f"Bearer {TENANT_KEY}"}
        first = await http.get(f"{url}/v1/tasks/{running['task_id']}/stream", headers=auth)
        assert first.status == 200
        await w.call("streamTask", 429, params={"task_id": running["task_id"]})
        first.close()
        queued = await w.call("submitTask", 202, json=slow)
        await w.call("submitTask", 429, json=slow)
        for t in (running, queued):
            await w.call("cancelTask", 204, params={"task_id": t["task_id"]})
        await w.call("submitTask", 503, json={"prompt": "x", "pool_id": "unready"})
        # -- control plane
        await w.call("getCapabilities", 200)
        await w.call("getPoolHealth", 200, params={"pool_id": "main"})
        await w.call("getPoolHealth", 404, params={"pool_id": "nope"})
        await w.call("getReplicaSets", 200)
        await w.call("getMetrics", 200)
        await w.call("reloadPool", 400, params={"pool_id": "main"}, json={"bogus": 1})
        await w.call("reloadPool", 404, params={"pool_id": "nope"}, json={"new_model_ref": "m"})
        await w.call("reloadPool", 503, params={"pool_id": "main"}, json={"new_model_ref": "m"})
        await w.call("resetPool", 404, params={"pool_id": "nope"})
        await w.call("resetPool", 503, params={"pool_id": "main"})
        # policies (ORCH-8570): a hook naming no module is refused; none configured is fine
        await w.call("reloadPolicies", 400, json={"admission": {"policy": "ghost"}})
        await w.call("reloadPolicies", 200, json={})
        await w.call("getPolicies", 200)
        await w.call("drainPool", 400, params={"pool_id": "drainme"}, json={"deadline_ms": -1})
        await w.call("drainPool", 404, params={"pool_id": "nope"}, json={})
        await w.call("drainPool", 200, params={"pool_id": "drainme"}, json={"deadline_ms": 1000})
        # -- operator views (ORCH-5120..5124)
        await w.call("getAdminStatus", 200)
        await w.call("listAdminTasks", 200)
        await w.call("listAdminTasks", 400, query={"limit": "0"})
        await w.call("getAdminTask", 200, params={"task_id": tid})
        await w.call("getAdminTask", 404, params={"task_id": missing})
        await w.call("streamAdminTask", 200, params={"task_id": tid})
        await w.call("streamAdminTask", 404, params={"task_id": missing})
        await w.call("cancelAdminTask", 204, params={"task_id": tid})
        await w.call("cancelAdminTask", 404, params={"task_id": missing})
        await w.call("listAdminSessions", 200)
        documented = {
            (op_id, status)
            for op_id, (_, _, _, op) in OPERATIONS.items()
            for status in op["responses"]
        }
        uncovered = documented - w.seen - set(NOT_TRIGGERED)
        assert not w.problems, "\n".join(w.problems)
        assert not uncovered, f"documented but never exercised: {sorted(uncovered)}"
        assert {op for op, _ in w.seen} == set(OPERATIONS)
        assert len(w.seen) >= 25


def test_checker_rejects_a_wrong_body():
    """The schema check is not vacuous: a TaskAccepted without queue_position fails."""
    problems: list[str] = []
    headers = {"Content-Type": "application/json", "X-Correlation-Id": "c"}
    body = b'{"task_id":"t","predicted_start_ms":0,"backoff_ms":0}'
    check_response("submitTask", 202, headers, body, problems)
    check_response("submitTask", 418, headers, body, problems)
    assert any("queue_position" in p for p in problems), problems
    assert any("418 not documented" in p for p in problems), problems
