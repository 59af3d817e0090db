"""pool-managerd's HTTP API against a fake engine: token, stream, commands, contract.

Every operation of ``contracts/openapi/pool-managerd.yaml`` is driven into its
documented outcomes and each answer (status, headers, body, every NDJSON
message) is validated against the document; an undocumented or unexercised
(operation, status) pair fails the test (ORCH-3021..3026).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml
from aiohttp import web
from jsonschema import Draft202012Validator
from llama_orch.core.config import Config, PoolManagerdConfig
from llama_orch.core.replica import ReplicaState
from llama_orch.pool_managerd import PoolManager
from llama_orch.pool_managerd.api import Registry, build_api, resolve_token
from llama_orch.pool_managerd.errors import PoolManagerError
from referencing import Registry as SchemaRegistry
from referencing import Resource
from referencing.jsonschema import DRAFT202012

from .test_pool import Recorder, _config
from .test_supervision import FAST

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DOC = yaml.safe_load(
    (Path(__file__).resolve().parents[3] / "contracts/openapi/pool-managerd.yaml").read_text()
)
_SCHEMAS = SchemaRegistry().with_resource(
    "urn:pm", Resource(contents=DOC, specification=DRAFT202012)
)
OPERATIONS = {
    op["operationId"]: (method.upper(), path, op)
    for path, item in DOC["paths"].items()
    for method, op in item.items()
}
NOT_TRIGGERED: dict[tuple[str, str], str] = {}


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    raw = msgspec.json.encode(schema).replace(b'"$ref":"#/', b'"$ref":"urn:pm#/')
    return Draft202012Validator(msgspec.json.decode(raw), registry=_SCHEMAS)


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = DOC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


class Api:
    def __init__(
        self, url: str, http: aiohttp.ClientSession, pm: PoolManager, registry: Registry
    ) -> None:
        self.url, self.http, self.pm, self.registry = url, http, pm, registry
        self.seen: set[tuple[str, str]] = set()
        self.problems: list[str] = []

    def check(self, op_id: str, status: int, headers: Any, body: bytes) -> None:
        _, _, op = OPERATIONS[op_id]
        self.seen.add((op_id, str(status)))
        if str(status) not in op["responses"]:
            self.problems.append(f"{op_id}: status {status} not documented")
            return
        response = _deref(op["responses"][str(status)])
        for name, header in response.get("headers", {}).items():
            if header.get("required") and name not in headers:
                self.problems.append(f"{op_id} {status}: header {name} missing")
        ctype = headers.get("Content-Type", "").split(";")[0]
        content = response.get("content", {})
        if ctype not in content:
            self.problems.append(f"{op_id} {status}: Content-Type {ctype!r} not documented")
            return
        if ctype == "application/json":
            for e in _validator(content[ctype]["schema"]).iter_errors(msgspec.json.decode(body)):
                self.problems.append(f"{op_id} {status}: {e.json_path}: {e.message}")

    def check_message(self, line: bytes) -> dict[str, Any]:
        content = OPERATIONS["streamReplicas"][2]["responses"]["200"]["content"]
        msgs = content["application/x-ndjson"]["x-ndjson-messages"]
        doc = msgspec.json.decode(line)
        for e in _validator(msgs[doc["type"]]).iter_errors(doc):
            self.problems.append(f"stream {doc['type']}: {e.json_path}: {e.message}")
        for e in _validator(content["application/x-ndjson"]["schema"]).iter_errors(doc):
            self.problems.append(f"stream message: {e.json_path}: {e.message}")
        return doc

    async def call(
        self,
        op_id: str,
        expect: int,
        *,
        pool_id: str = "p",
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        method, path, _ = OPERATIONS[op_id]
        url = self.url + path.format(pool_id=pool_id)
        hdrs = AUTH if headers is None else headers
        async with self.http.request(method, url, json=json, headers=hdrs) as resp:
            body = await resp.read()
            status, resp_headers = resp.status, resp.headers
        if status != expect:
            self.problems.append(f"{op_id}: expected {expect}, got {status}: {body[:300]!r}")
        self.check(op_id, status, resp_headers, body)
        return msgspec.json.decode(body) if body else None


@pytest.fixture
async def start_api(fake_engine: Path, fake_adapter: object) -> AsyncIterator[Callable[..., Any]]:
    cleanups: list[Any] = []

    async def start(cfg: Config, rec: Recorder | None = None) -> Api:
        registry: Registry | None = None
        recorder = rec or Recorder()

        def on_change(state: ReplicaState) -> None:
            recorder(state)
            if registry is not None:
                registry.publish(state)

        pm = PoolManager(cfg, on_change=on_change)
        registry = Registry(pm.replicas)
        runner = web.AppRunner(build_api(pm, registry, TOKEN), shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        http = aiohttp.ClientSession()
        cleanups.append((pm, registry, runner, http))
        await pm.start()
        host, port = runner.addresses[0][:2]
        return Api(f"http://{host}:{port}", http, pm, registry)

    yield start
    for pm, registry, runner, http in cleanups:
        await http.close()
        registry.closed.set()
        await runner.cleanup()
        await pm.stop()


def test_token_comes_from_config_then_file_then_environment(tmp_path: Path) -> None:
    """ORCH-3021: token sources in order; an empty file is an error; no token, no API."""
    f = tmp_path / "token"
    f.write_text(" from-file\n")
    env = {"LLAMA_ORCH_POOL_TOKEN": "from-env"}
    assert resolve_token(PoolManagerdConfig(token="inline", token_file=str(f)), env) == "inline"
    assert resolve_token(PoolManagerdConfig(token_file=str(f)), env) == "from-file"
    assert resolve_token(PoolManagerdConfig(), env) == "from-env"
    assert resolve_token(PoolManagerdConfig(), {}) is None
    f.write_text("\n")
    with pytest.raises(PoolManagerError, match="empty"):
        resolve_token(PoolManagerdConfig(token_file=str(f)), env)
    with pytest.raises(PoolManagerError, match="without a token"):
        build_api(None, Registry(list), "")  # type: ignore[arg-type]


def test_a_slow_stream_consumer_is_marked_for_disconnection() -> None:
    """ORCH-3022: a full subscriber queue is never skipped over silently."""
    registry = Registry(list, capacity=1)
    state = ReplicaState(pool_id="p", replica_id="p-r0", engine="e", status="ready")
    with registry.subscribe() as sub:
        registry.publish(state)
        assert not sub.overflowed.is_set()
        registry.publish(state)
        assert sub.overflowed.is_set() and sub.queue.qsize() == 1


async def test_every_request_needs_the_bearer_token(
    start_api: Callable[..., Any], fake_engine: Path, fake_model: Path
) -> None:
    """ORCH-3021: missing, wrong or non-bearer tokens get 401 on every operation."""
    api: Api = await start_api(_config(fake_engine, fake_model, replicas=1, **FAST))
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}]
    for op_id in OPERATIONS:
        for headers in wrong:
            body = await api.call(op_id, 401, headers=headers, json={})
            assert body["code"] == "UNAUTHENTICATED"
    async with api.http.get(api.url + "/nowhere") as resp:
        assert resp.status == 401
    assert api.problems == []


async def test_the_stream_pushes_a_snapshot_changes_and_lease_renewals(
    start_api: Callable[..., Any], fake_engine: Path, fake_model: Path
) -> None:
    """ORCH-3022: snapshot first, one message per change, leases when idle."""
    api: Api = await start_api(_config(fake_engine, fake_model, replicas=2, **FAST))
    url = api.url + "/v1/replicas/stream?lease_ttl_ms=600"
    loop = asyncio.get_running_loop()
    async with api.http.get(url, headers=AUTH) as resp:
        api.check("streamReplicas", resp.status, resp.headers, b"")
        first = api.check_message(await resp.content.readline())
        assert first["type"] == "snapshot" and first["lease_ttl_ms"] == 600
        assert sorted(r["replica_id"] for r in first["replicas"]) == ["p-r0", "p-r1"]
        assert {r["status"] for r in first["replicas"]} == {"ready"}
        t0 = loop.time()
        idle = api.check_message(await resp.content.readline())
        assert idle == {"type": "lease", "lease_ttl_ms": 600}
        assert loop.time() - t0 < 0.6  # a third of the TTL, with slack for a busy machine
        victim = next(s for s in api.pm.replicas() if s.replica_id == "p-r0")
        os.killpg(victim.pid or 0, signal.SIGKILL)
        seen: list[str] = []
        async with asyncio.timeout(20):
            while "ready" not in seen:
                msg = api.check_message(await resp.content.readline())
                if msg["type"] == "replica":
                    assert msg["state"]["replica_id"] == "p-r0"
                    seen.append(msg["state"]["status"])
        assert seen[0] == "failed" and "starting" in seen
    async with api.http.get(api.url + "/v1/replicas/stream?lease_ttl_ms=10", headers=AUTH) as r:
        api.check("streamReplicas", r.status, r.headers, await r.read())
        assert r.status == 400
    assert api.problems == []


async def test_every_operation_answers_as_documented(
    start_api: Callable[..., Any],
    fake_engine: Path,
    fake_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ORCH-3021..3026 against the contract: drain, reload (ok, refused, rolled back,
    released early), reset and the replica list."""
    api: Api = await start_api(_config(fake_engine, fake_model, replicas=1, **FAST))
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF another model")
    listed = await api.call("listReplicas", 200)
    assert [r["replica_id"] for r in listed["replicas"]] == ["p-r0"]

    await api.call("resetPool", 404, pool_id="nope")
    assert (await api.call("resetPool", 200)) == {"pool_id": "p", "replicas": []}
    await api.call("reloadDrained", 404, pool_id="nope")
    assert (await api.call("reloadDrained", 200))["released"] is False

    await api.call("reloadPool", 400, json={"bogus": 1})
    await api.call("reloadPool", 404, pool_id="nope", json={"new_model_ref": str(other)})
    refused = await api.call(
        "reloadPool", 403, json={"new_model_ref": str(other), "model_digest": "00" * 32}
    )
    assert refused["code"] == "UNTRUSTED_ARTIFACT"
    monkeypatch.setenv("FAKE_ENGINE_MODE", "crash")
    rolled = await api.call("reloadPool", 503, json={"new_model_ref": str(other)})
    assert rolled["code"] == "POOL_UNREADY" and "rolled back" in rolled["message"]
    monkeypatch.delenv("FAKE_ENGINE_MODE")
    assert [s.replica_id for s in api.pm.replicas()] == ["p-r0"]

    # A reload whose old replicas are released early by ``reload/drained``.
    reload = asyncio.create_task(
        api.call("reloadPool", 200, json={"new_model_ref": str(other), "drain_deadline_ms": 60_000})
    )
    async with asyncio.timeout(20):
        while not any(s.status == "draining" for s in api.pm.replicas()):
            await asyncio.sleep(0.02)
    assert (await api.call("reloadDrained", 200))["released"] is True
    async with asyncio.timeout(10):
        done = await reload
    assert done["replicas"] == ["p-g2-r0"] and done["retired"] == ["p-r0"]
    assert done["drained_early"] is True and done["model_ref"] == str(other)

    await api.call("drainPool", 400, json={"deadline_ms": -1})
    await api.call("drainPool", 404, pool_id="nope", json={})
    drained = await api.call("drainPool", 200, json={"deadline_ms": 0})
    assert drained == {"pool_id": "p", "replicas": ["p-g2-r0"]}
    assert api.pm.replicas() == []

    assert api.problems == []
    documented = {(o, s) for o, (_, _, op) in OPERATIONS.items() for s in op["responses"]}
    api.seen |= {(o, "401") for o in OPERATIONS}  # test_every_request_needs_the_bearer_token
    api.seen |= {("streamReplicas", "200"), ("streamReplicas", "400")}  # the stream test
    assert documented - api.seen - set(NOT_TRIGGERED) == set()


async def test_reset_restarts_only_replicas_whose_circuit_is_open(
    start_api: Callable[..., Any],
    fake_engine: Path,
    fake_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ORCH-3026: an open breaker is reset without a reload; a fresh breaker follows."""
    monkeypatch.setenv("FAKE_ENGINE_MODE", "crash")
    rec = Recorder()
    cfg = _config(fake_engine, fake_model, replicas=1, breaker_failures=2, **FAST)
    api: Api = await start_api(cfg, rec)
    await rec.wait_for(lambda s: s.circuit_open, timeout=30)
    (opened,) = api.pm.replicas()
    assert opened.status == "failed" and opened.last_error.startswith("circuit open")
    monkeypatch.setenv("FAKE_ENGINE_MODE", "ok")  # the cause is fixed (say, a driver)
    assert (await api.call("resetPool", 200)) == {"pool_id": "p", "replicas": ["p-r0"]}
    await rec.wait_for(lambda s: s.ready, timeout=20)
    (back,) = api.pm.replicas()
    assert back.ready and not back.circuit_open and back.last_error is None
    assert back.model_digest == opened.model_digest  # same model, no reload
    assert api.pm.counters.breaker_resets == 1 and api.pm.counters.reloads == 0
    assert (await api.call("resetPool", 200))["replicas"] == []  # closed: left alone
    assert api.pm.replicas()[0].pid == back.pid
    assert api.problems == []


async def test_a_shutdown_delivers_the_stopped_states_then_ends_the_stream(
    start_api: Callable[..., Any], fake_engine: Path, fake_model: Path
) -> None:
    """ORCH-3022/3024: the consumer learns of the stop at once, not by lease expiry."""
    api: Api = await start_api(_config(fake_engine, fake_model, replicas=2, **FAST))
    url = api.url + "/v1/replicas/stream?lease_ttl_ms=60000"
    async with api.http.get(url, headers=AUTH) as resp:
        assert api.check_message(await resp.content.readline())["type"] == "snapshot"
        await api.pm.stop()  # the daemon's shutdown order: engines, then streams
        api.registry.closed.set()
        async with asyncio.timeout(5):
            rest = [api.check_message(line) async for line in resp.content]
    stopped = {m["state"]["replica_id"] for m in rest if m["state"]["status"] == "stopped"}
    assert stopped == {"p-r0", "p-r1"} and {m["type"] for m in rest} == {"replica"}
    assert api.problems == []
