"""A remote pool-managerd follows the catalog (ORCH-3381, ORCH-3382).

The pool-managerd is the real one (its ``PoolManager`` and HTTP API, in this
process, on a loopback port with a token), so the fetch and the digest check
before an engine starts are its own. Its engines are a tiny stand-in process
answering ``/health`` and its adapter reports what the pool manager loaded:
no model runs here; routing of tasks by version is proven on mock pools in
``test_catalog.py`` and on real engines in ``test_catalog_switch_real.py``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from llama_orch.core.adapter_api import (
    AdapterEvent,
    EngineMetrics,
    EngineProps,
    Finished,
    GenerateRequest,
    Health,
    TokenChunk,
    WorkerAdapter,
)
from llama_orch.core.config import Config
from llama_orch.pool_managerd import PoolManager
from llama_orch.pool_managerd.api import Registry, build_api

from .test_catalog import _sample

TOKEN = "a-long-shared-token"
V1, V2, V3 = (b"GGUF" + bytes([n]) * 4096 for n in (1, 2, 3))
ENGINE = """\
import http.server, sys
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *a):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


class StandInAdapter(WorkerAdapter):
    """pool-managerd's readiness gate only: reports the model the pool manager loaded."""

    engine = "llamacpp-http"

    async def health(self) -> Health:
        return Health(live=True, ready=True)

    async def props(self) -> EngineProps:
        return EngineProps(
            engine=self.engine,
            engine_version="stand-in",
            model_ref=self.target.model_ref,
            model_digest=self.target.model_digest,
            slots=1,
            ctx=512,
        )

    async def generate(self, req: GenerateRequest) -> AsyncIterator[AdapterEvent]:
        yield TokenChunk("!")
        yield Finished(reason="length", tokens_generated=1)

    async def cancel(self, task_id: str) -> None:
        return None

    async def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    async def metrics(self) -> EngineMetrics:
        return EngineMetrics()


@pytest.fixture
async def pool_managerd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[Path], Any]]:
    monkeypatch.setattr(
        "llama_orch.pool_managerd.pool.load_adapter_class", lambda e: StandInAdapter
    )
    engine = tmp_path / "stand-in-engine"
    engine.write_text(f"#!{sys.executable}\n{ENGINE}")
    engine.chmod(0o755)
    started: list[tuple[PoolManager, Registry, web.AppRunner]] = []

    async def start(model: Path, pool_id: str = "rp") -> tuple[str, PoolManager, web.AppRunner]:
        cfg = msgspec.convert(
            {
                "allow_cpu_inference": True,
                "pools": [
                    {
                        "id": pool_id,
                        "engine": "llamacpp-http",
                        "model": str(model),
                        "engine_binary": str(engine),
                        "replicas": 1,
                        "startup_timeout_s": 20.0,
                    }
                ],
            },
            Config,
        )
        registry: Registry | None = None

        def publish(state: Any) -> None:
            if registry is not None:
                registry.publish(state)

        pm = PoolManager(cfg, on_change=publish)
        registry = Registry(pm.replicas)
        runner = web.AppRunner(build_api(pm, registry, TOKEN), shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        started.append((pm, registry, runner))
        await pm.start()
        host, port = runner.addresses[0][:2]

        async def cut() -> None:  # the API goes away (streams end), the engines stay
            registry.closed.set()
            await runner.cleanup()

        return f"http://{host}:{port}", pm, cut

    yield start
    for pm, registry, runner in started:
        registry.closed.set()
        await runner.cleanup()
        await pm.stop()  # its engines, by process group


async def test_a_remote_pool_follows_promote_and_rollback_and_refuses_tampered_bytes(
    start_orchestrator: Any,
    pool_managerd: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ORCH-3381: promote and rollback reload a remote pool following ``lm`` with the
    entry's reference and digest; tampered bytes are refused by pool-managerd with
    UNTRUSTED_ARTIFACT before an engine starts. ORCH-3382: capabilities name the digest."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    paths = []
    for n, data in enumerate((V1, V2, V3), 1):
        paths.append(tmp_path / f"v{n}.gguf")
        paths[-1].write_bytes(data)
    d1, d2, d3 = (hashlib.sha256(p.read_bytes()).hexdigest() for p in paths)
    url, pm, _ = await pool_managerd(paths[0])
    config = msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 1.0},
            "auth": {"enabled": False},
            "catalog": {"path": str(tmp_path / "catalog.sqlite3"), "trust": {"mode": "warn"}},
            # the pool follows the catalog name `lm`; its engines run over there
            "pools": [{"id": "rp", "engine": "llamacpp-http", "model": "lm"}],
            "observability": {"self_test": False},  # the stand-in engine cannot decode
            "pool_managers": [{"name": "a", "url": url, "token": TOKEN, "pools": ["rp"]}],
        },
        Config,
    )
    run = await start_orchestrator(config)
    api = run.url + "/v1/catalog/models"
    for path, state in ((paths[0], "active"), (paths[1], "draft"), (paths[2], "draft")):
        resp = await run.http.post(api, json={"name": "lm", "ref": str(path), "state": state})
        assert resp.status == 201, await resp.text()
    i1, i2, i3 = d1[:16], d2[:16], d3[:16]

    async def served() -> list[str]:
        async with run.http.get(run.url + "/v1/capabilities") as r:
            pools = {p["id"]: p for p in (await r.json())["pools"]}
        return list(pools["rp"]["model_digests"])  # ORCH-3382

    assert await served() == [d1]
    canary = await run.http.post(f"{api}/{i2}/state", json={"state": "canary", "weight": 0.5})
    assert canary.status == 200, await canary.text()

    # ORCH-3381: promote reloads the remote pool with the entry's reference and digest
    resp = await run.http.post(f"{api}/{i2}/promote", json={"drain_deadline_ms": 5000})
    body = await resp.json()
    assert resp.status == 200, body
    assert [(r["pool_id"], r["model_digest"]) for r in body["reloaded"]] == [("rp", d2)]
    assert [s.model_digest for s in pm.replicas()] == [d2]  # what pool-managerd loaded
    assert await served() == [d2]

    resp = await run.http.post(f"{api}/{i2}/rollback", json={"drain_deadline_ms": 5000})
    body = await resp.json()
    assert resp.status == 200, body
    assert [r["model_digest"] for r in body["reloaded"]] == [d1]
    assert [s.model_digest for s in pm.replicas()] == [d1]
    assert await served() == [d1]

    # Tampered after registration: pool-managerd's digest check refuses it before any
    # engine of it starts; the pool serves v1 and the catalog is unchanged.
    assert (await run.http.post(f"{api}/{i2}/rollback")).status == 200  # canary -> draft
    canary = await run.http.post(f"{api}/{i3}/state", json={"state": "canary", "weight": 0.5})
    assert canary.status == 200, await canary.text()
    data = bytearray(V3)
    data[100] ^= 0x01
    paths[2].write_bytes(bytes(data))
    st = paths[2].stat()
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    before = [s.replica_id for s in pm.replicas()]
    resp = await run.http.post(f"{api}/{i3}/promote", json={"drain_deadline_ms": 5000})
    body = await resp.json()
    assert resp.status == 403 and body["code"] == "UNTRUSTED_ARTIFACT", body
    assert d3 in body["message"]  # the expected digest, named by pool-managerd
    assert [s.replica_id for s in pm.replicas()] == before  # no replica of v3 was added
    assert pm.counters.reload_rollbacks == 1
    assert [s.model_digest for s in pm.replicas()] == [d1]
    assert await served() == [d1]
    states = {m["id"]: m["state"] for m in (await (await run.http.get(api)).json())["models"]}
    assert states == {i1: "active", i2: "draft", i3: "canary"}
    # the trust policy was applied here, for the pool's engine, before each reload
    scrape = run.orch.metrics.render().decode()
    loads = _sample(
        scrape,
        "catalog_verifications_total",
        engine="llamacpp-http",
        result="warn",
        reason="unsigned",
    )
    assert loads == 3  # promote v2, rollback to v1, promote v3


async def test_a_failed_remote_reload_puts_back_the_pools_already_switched(
    start_orchestrator: Any,
    pool_managerd: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ORCH-3361 with ORCH-3381: two pools follow ``lm`` on two pool-managerds; the
    second cannot be reached during the promote, so the first, already switched, is
    reloaded back, the answer is 503 and the catalog does not change."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    v1, v2 = tmp_path / "v1.gguf", tmp_path / "v2.gguf"
    v1.write_bytes(V1)
    v2.write_bytes(V2)
    d1, d2 = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (v1, v2))
    url_a, pm_a, _ = await pool_managerd(v1, "rp")
    url_b, _, cut_b = await pool_managerd(v1, "rp2")
    pool = {"engine": "llamacpp-http", "model": "lm"}
    config = msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 1.0},
            "auth": {"enabled": False},
            "catalog": {"path": str(tmp_path / "catalog.sqlite3"), "trust": {"mode": "off"}},
            "pools": [{"id": "rp", **pool}, {"id": "rp2", **pool}],
            "pool_managers": [
                {"name": "a", "url": url_a, "token": TOKEN, "pools": ["rp"]},
                {"name": "b", "url": url_b, "token": TOKEN, "pools": ["rp2"]},
            ],
            "observability": {"self_test": False},
        },
        Config,
    )
    run = await start_orchestrator(config)
    api = run.url + "/v1/catalog/models"
    for path, state in ((v1, "active"), (v2, "draft")):
        resp = await run.http.post(api, json={"name": "lm", "ref": str(path), "state": state})
        assert resp.status == 201, await resp.text()
    i1, i2 = d1[:16], d2[:16]
    assert (await run.http.post(f"{api}/{i2}/state", json={"state": "canary", "weight": 0.5})).ok
    await cut_b()  # b's API is gone (its engines keep running)

    resp = await run.http.post(f"{api}/{i2}/promote", json={"drain_deadline_ms": 5000})
    body = await resp.json()
    assert resp.status == 503 and body["code"] == "POOL_UNAVAILABLE", body
    assert pm_a.counters.reloads == 2  # to v2, then back
    assert [s.model_digest for s in pm_a.replicas()] == [d1]
    states = {m["id"]: m["state"] for m in (await (await run.http.get(api)).json())["models"]}
    assert states == {i1: "active", i2: "canary"}
