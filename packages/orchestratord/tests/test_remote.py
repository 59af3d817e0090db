"""orchestratord and remote pool-managerds, against a scripted pool-managerd.

The fake pool-managerd speaks the API of ``contracts/openapi/pool-managerd.yaml``
(bearer token, NDJSON registry stream, commands) and can be frozen like a
SIGSTOPped process: it stops writing and leaves new connections unanswered.
The replicas are mock-engine replicas whose health never changes, so only
the lease can take them out of placement (ORCH-3023..3026). The same
scenario against real pool-managerd processes and llama-server engines is in
``test_remote_real.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from aiohttp import web
from llama_orch.core.config import Config
from llama_orch.core.replica import ReplicaState

from .conftest import Running
from .test_app_openapi_conformance import check_response

TOKEN = "shared-secret"
_json = msgspec.json.Encoder()


class FakePoolManagerd:
    def __init__(self, replicas: list[ReplicaState], token: str = TOKEN) -> None:
        self.replicas = {s.replica_id: s for s in replicas}
        self.token = token
        self.running = asyncio.Event()  # cleared = frozen (SIGSTOP)
        self.running.set()
        self.changes: asyncio.Queue[ReplicaState] = asyncio.Queue()
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.auth_seen: list[str] = []
        self.drained = asyncio.Event()
        self.generation = 0
        self.epoch = 0  # bumped by a restart: open streams end
        self.url = ""
        self._runner: web.AppRunner | None = None

    def change(self, state: ReplicaState) -> None:
        self.replicas[state.replica_id] = state
        self.changes.put_nowait(state)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        await self.running.wait()  # a stopped process answers nothing
        epoch = self.epoch
        ttl = int(request.query["lease_ttl_ms"])
        resp = web.StreamResponse()
        resp.content_type = "application/x-ndjson"
        await resp.prepare(request)
        snap = {"type": "snapshot", "lease_ttl_ms": ttl, "replicas": list(self.replicas.values())}
        await resp.write(_json.encode(snap) + b"\n")
        while True:
            try:
                async with asyncio.timeout(ttl / 3000):
                    state = await self.changes.get()
                msg: dict[str, Any] = {"type": "replica", "lease_ttl_ms": ttl, "state": state}
            except TimeoutError:
                msg = {"type": "lease", "lease_ttl_ms": ttl}
            await self.running.wait()
            if epoch != self.epoch:
                return resp  # restarted: this stream ends
            try:
                await resp.write(_json.encode(msg) + b"\n")
            except ConnectionError:
                return resp

    async def _command(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        path = request.path
        self.commands.append((path, body))
        pid = request.match_info["pool_id"]
        mine = [r for r in self.replicas if self.replicas[r].pool_id == pid]
        if path.endswith("/drain"):
            for rid in mine:
                self.change(msgspec.structs.replace(self.replicas[rid], status="stopped"))
            return web.json_response({"pool_id": pid, "replicas": mine})
        if path.endswith("/reset"):
            return web.json_response({"pool_id": pid, "replicas": mine[:1]})
        if path.endswith("/reload/drained"):
            self.drained.set()
            return web.json_response({"pool_id": pid, "released": True})
        # reload: start new, switch, wait for the consumer's drain report
        self.generation += 1
        gen = self.generation
        old = [self.replicas[r] for r in mine if self.replicas[r].status != "stopped"]
        new = msgspec.structs.replace(
            _replica(f"{pid}-g{gen}-r0"),
            model_ref=body["new_model_ref"],
            model_digest=f"d{gen + 1}",
        )
        self.drained.clear()
        self.change(new)
        for s in old:
            self.change(msgspec.structs.replace(s, status="draining"))
        if old:
            async with asyncio.timeout(body["drain_deadline_ms"] / 1000):
                await self.drained.wait()
        for s in old:
            self.change(msgspec.structs.replace(s, status="stopped"))
        return web.json_response(
            {
                "pool_id": pid,
                "model_ref": body["new_model_ref"],
                "model_digest": new.model_digest,
                "replicas": [new.replica_id],
                "retired": [s.replica_id for s in old],
                "drained_early": bool(old),
            }
        )

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        self.auth_seen.append(header)
        if header != f"Bearer {self.token}":
            return web.json_response({"code": "UNAUTHENTICATED", "message": "no"}, status=401)
        return await handler(request)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/v1/replicas/stream", self._stream)
        app.router.add_post("/v1/pools/{pool_id}/{action:.*}", self._command)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        self.running.set()
        if self._runner is not None:
            await self._runner.cleanup()


def _replica(rid: str, pool: str = "rp", status: str = "ready") -> ReplicaState:
    return ReplicaState(
        pool_id=pool,
        replica_id=rid,
        engine="mock",
        status=status,  # type: ignore[arg-type]
        base_url="mock://0",
        model_ref="mock-model",
        model_digest="d1",
        engine_version="mock-1",
        slots=2,
        ctx=2048,
    )


def _config(managers: list[dict[str, Any]]) -> Config:
    return msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 1.0},
            "auth": {"enabled": False},  # other features are tested without keys (ORCH-8001)
            "pools": [
                {
                    "id": "rp",
                    "engine": "mock",
                    "model": "mock-model",
                    "adapter_options": {"token_delay_ms": 5, "slots": 2},
                }
            ],
            "pool_managers": managers,
        },
        Config,
    )


@pytest.fixture
async def fake_managers() -> AsyncIterator[Callable[..., Awaitable[FakePoolManagerd]]]:
    started: list[FakePoolManagerd] = []

    async def start(replicas: list[ReplicaState], token: str = TOKEN) -> FakePoolManagerd:
        fake = FakePoolManagerd(replicas, token)
        await fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.stop()


async def _run_task(orch: Running) -> dict[str, Any]:
    resp = await orch.submit(max_tokens=3, pool_id="rp")
    assert resp.status == 202, await resp.text()
    tid = (await resp.json())["task_id"]
    events = await orch.events(tid)
    assert events[-1][1] == "end", events
    async with orch.http.get(f"{orch.url}/v1/tasks/{tid}") as r:
        return dict(await r.json())


async def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


async def test_a_frozen_pool_managerd_loses_its_lease_and_gets_it_back(
    start_orchestrator: Any, fake_managers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """ORCH-3023/3024: replicas of two pool-managerds are placed; freezing one expires
    its lease and takes its replicas out of placement though their engines are healthy;
    unfreezing restores them through a new snapshot."""
    a = await fake_managers([_replica("rp-r0")])
    b = await fake_managers([_replica("rp-r0"), _replica("other-r0", pool="other")])
    orch: Running = await start_orchestrator(
        _config(
            [
                {"name": "a", "url": a.url, "token": TOKEN, "pools": ["rp"], "lease_ttl_s": 0.6},
                {"name": "b", "url": b.url, "token": TOKEN, "pools": ["rp"], "lease_ttl_s": 0.6},
            ]
        )
    )
    pool = orch.orch.pools["rp"]
    await _until(lambda: len(pool.ready_replicas()) == 2)
    assert sorted(pool.replicas) == ["a/rp-r0", "b/rp-r0"]  # names keep hosts apart
    assert "b/other-r0" not in pool.states  # a pool b is not configured to serve
    assert {a.auth_seen[0], b.auth_seen[0]} == {f"Bearer {TOKEN}"}

    placed = {(await _run_task(orch))["replica_id"] for _ in range(6)}
    assert placed == {"a/rp-r0"}  # ties go to the lowest id: a is placed while it leases

    a.running.clear()  # SIGSTOP
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await _until(lambda: not pool.states["a/rp-r0"].ready, timeout=5)
    took = loop.time() - t0
    lost = pool.states["a/rp-r0"]
    assert lost.status == "failed" and (lost.last_error or "").startswith("lease expired:")
    assert 0.3 < took < 3.0
    assert (await pool.replicas["a/rp-r0"].adapter.health()).ready  # its engine is fine
    placed = {(await _run_task(orch))["replica_id"] for _ in range(4)}
    assert placed == {"b/rp-r0"}

    a.running.set()  # SIGCONT
    await _until(lambda: pool.states["a/rp-r0"].ready, timeout=10)
    placed = {(await _run_task(orch))["replica_id"] for _ in range(4)}
    assert placed == {"a/rp-r0"}
    expired = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lease expired")]
    assert len(expired) == 1 and "pool-managerd a " in expired[0]

    # A replica the snapshot of a restarted pool-managerd no longer reports is stopped.
    a.replicas.clear()
    a.epoch += 1
    await _until(lambda: pool.states["a/rp-r0"].status == "stopped", timeout=10)


async def test_a_wrong_token_never_gets_a_lease(
    start_orchestrator: Any, fake_managers: Any
) -> None:
    """ORCH-3021/3023: the pool-managerd refuses the stream; nothing becomes placeable."""
    a = await fake_managers([_replica("rp-r0")], token="another")
    orch: Running = await start_orchestrator(
        _config([{"name": "a", "url": a.url, "token": TOKEN, "pools": ["rp"]}]), wait_ready=False
    )
    await _until(lambda: len(a.auth_seen) >= 2)  # it retries, with backoff
    assert orch.orch.pools["rp"].states == {}
    resp = await orch.submit(max_tokens=3, pool_id="rp")
    assert resp.status == 503


async def test_drain_reload_and_reset_go_to_the_pool_managerd(
    start_orchestrator: Any, fake_managers: Any
) -> None:
    """ORCH-3025/3026: orchestratord drains its tasks and sends the commands."""
    a = await fake_managers([_replica("rp-r0")])
    orch: Running = await start_orchestrator(
        _config([{"name": "a", "url": a.url, "token": TOKEN, "pools": ["rp"]}])
    )
    pool = orch.orch.pools["rp"]
    await _until(lambda: len(pool.ready_replicas()) == 1)
    problems: list[str] = []

    async with orch.http.post(f"{orch.url}/v1/pools/rp/reset") as r:
        body = await r.read()
        check_response("resetPool", r.status, r.headers, body, problems)
        assert r.status == 200 and msgspec.json.decode(body)["replicas"] == ["a/rp-r0"]

    # reload: the old replica drains its running task before it is released
    resp = await orch.submit(max_tokens=40, pool_id="rp")
    tid = (await resp.json())["task_id"]
    await orch.until(lambda: orch.orch.get(tid).state == "running")
    req = {"new_model_ref": "mock-model-2", "drain_deadline_ms": 10_000}
    async with orch.http.post(f"{orch.url}/v1/pools/rp/reload", json=req) as r:
        body = await r.read()
        check_response("reloadPool", r.status, r.headers, body, problems)
        result = msgspec.json.decode(body)
    assert r.status == 200, result
    assert result["replicas"] == ["a/rp-g1-r0"] and result["model_digest"] == "d2"
    assert result["drain"]["finished"] == 1 and result["drain"]["ended"] == 0
    assert orch.orch.tasks.get(tid).state == "completed"  # type: ignore[union-attr]
    assert [c[0] for c in a.commands] == [
        "/v1/pools/rp/reset",
        "/v1/pools/rp/reload",
        "/v1/pools/rp/reload/drained",
    ]
    await _until(lambda: pool.states["a/rp-r0"].status == "stopped")
    assert (await _run_task(orch))["replica_id"] == "a/rp-g1-r0"

    async with orch.http.post(f"{orch.url}/v1/pools/rp/drain", json={"deadline_ms": 0}) as r:
        assert r.status == 200, await r.text()
    assert a.commands[-1] == ("/v1/pools/rp/drain", {"deadline_ms": 0})
    await _until(lambda: pool.states["a/rp-g1-r0"].status == "stopped")

    # A reload brings a drained pool back into service (its new replica is placed).
    async with orch.http.post(f"{orch.url}/v1/pools/rp/reload", json=req) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["replicas"] == ["a/rp-g2-r0"]
    assert a.commands[-1][0] == "/v1/pools/rp/reload"  # nothing old to report drained
    assert [r.state.replica_id for r in pool.ready_replicas()] == ["a/rp-g2-r0"]
    assert (await _run_task(orch))["replica_id"] == "a/rp-g2-r0"

    # The pool-managerd is gone: the tasks are drained, the stop is reported as 503.
    await a.stop()
    async with orch.http.post(f"{orch.url}/v1/pools/rp/drain", json={"deadline_ms": 0}) as r:
        body = await r.read()
        check_response("drainPool", r.status, r.headers, body, problems)
        assert r.status == 503 and msgspec.json.decode(body)["code"] == "POOL_UNAVAILABLE"
    assert problems == []


def test_pool_managers_must_name_known_pools_without_endpoints() -> None:
    """ORCH-3023: config validation."""
    from llama_orch.core.config import parse_config

    base = "pools: [{id: rp, engine: mock}, {id: ep, engine: mock, endpoints: ['mock://0']}]\n"
    ok = base + "pool_managers: [{name: a, url: 'http://h:1', pools: [rp]}]\n"
    assert parse_config(ok).pool_managers[0].lease_ttl_s == 5.0
    a = "{name: a, url: 'http://h:1', pools: [rp]}"
    for bad, why in (
        ("[{name: a, url: 'http://h:1', pools: [nope]}]", "unknown pool"),
        ("[{name: a, url: 'http://h:1', pools: [ep]}]", "endpoints"),
        (f"[{a}, {{name: b, url: 'http://h:2', pools: []}}]", "length >= 1"),
        (f"[{a}, {a}]", "unique"),
    ):
        with pytest.raises(msgspec.ValidationError, match=why):
            parse_config(base + f"pool_managers: {bad}\n")
