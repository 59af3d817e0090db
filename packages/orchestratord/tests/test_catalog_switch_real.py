"""Promote and rollback switch the pool that serves a model by name, through the
pool manager's reload, on real ``llama-server`` engines (ORCH-3360, ORCH-3361,
ORCH-3362, ORCH-3365).

Two real artifacts are two versions of one catalog name ``lm``: v1 is
SmolLM2-135M-Instruct (pypi, 98 MB), v2 is Gemma 3 270M (pypi, 253 MB) — two
files with different digests, the only small GGUFs the machine has. One pool has
``model: lm``: it follows the name's Active version. A long task runs on v1 and a
second one waits behind it when v2 is promoted: the reload starts v2 beside v1,
switches placement, the waiting task starts on v2, the running one finishes on
v1 (the drain counts it), and a new task runs on v2. Rollback reloads v1.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.orchestratord.catalog_service import CatalogService, RegisterRequest
from llama_orch.orchestratord.metrics import Metrics
from llama_orch.pool_managerd.provision import provision_model

pytestmark = pytest.mark.real_engine

GEMMA = "pypi:gemma3-270m-q4_k_m"
SMOL = "pypi:smollm2-135m-instruct-q4_1"
COUNT = "1, 2, 3, 4, 5, 6, 7, 8,"  # SmolLM2 counts on at temperature 0: a long task


async def _started_digest(run: Any, tid: str) -> tuple[str, list[str]]:
    events = await run.events(tid)
    started = [e[2] for e in events if e[1] == "started"]
    return started[0]["model_digest"], [e[1] for e in events if e[1] in ("end", "error")]


async def test_promote_and_rollback_reload_the_pool_serving_the_name(
    start_orchestrator, llama_server_binary, smollm2_model, tmp_path: Path
) -> None:
    gemma_path, gemma_digest = await asyncio.to_thread(provision_model, GEMMA)
    smol_path, smol_digest = smollm2_model
    i1, i2 = smol_digest[:16], gemma_digest[:16]
    config = msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {"enabled": False},
            "allow_cpu_inference": True,
            "observability": {"self_test": False},
            "catalog": {"path": str(tmp_path / "catalog.sqlite3"), "trust": {"mode": "off"}},
            "pools": [
                {
                    "id": "lm",
                    "model": "lm",  # the name: the pool follows its Active version
                    "engine": "llamacpp-http",
                    "engine_binary": str(llama_server_binary.path),
                    "ctx": 512,
                    "slots": 1,
                    "threads": 1,  # two engines share the cores during the switch
                }
            ],
        },
        Config,
    )
    svc = CatalogService(config.catalog, Metrics(queue_depths=list))
    for body in (
        {"name": "lm", "ref": SMOL, "tags": ["v1"], "state": "active"},
        {"name": "lm", "ref": GEMMA, "tags": ["v2"]},
    ):
        await asyncio.to_thread(svc.register, msgspec.convert(body, RegisterRequest), print)

    run = await start_orchestrator(config)
    api = f"{run.url}/v1/catalog/models"
    pool = run.orch.pools["lm"]
    assert [r.state.model_digest for r in pool.ready_replicas()] == [smol_digest]
    v1_pids = {s.pid for s in pool.states.values()}
    resp = await run.http.post(f"{api}/{i2}/state", json={"state": "canary", "weight": 0.5})
    assert resp.status == 200, await resp.text()
    text = await run.metrics_text()  # ORCH-3365: lifecycle per version
    assert f'catalog_model_state{{lifecycle="active",model_id="{i1}"}} 1.0' in text
    assert f'catalog_model_state{{lifecycle="canary",model_id="{i2}"}} 1.0' in text

    # A runs on v1; B waits behind it (one slot)
    resp = await run.submit(model_ref="lm", prompt=COUNT, max_tokens=400, seed=1)
    assert resp.status == 202, await resp.text()
    a = (await resp.json())["task_id"]
    await run.until(lambda: run.orch.get(a).state == "running", 60)
    resp = await run.submit(model_ref="lm", prompt="The sky is", max_tokens=4, seed=1)
    assert resp.status == 202, await resp.text()
    b = (await resp.json())["task_id"]

    resp = await run.http.post(f"{api}/{i2}/promote", json={"drain_deadline_ms": 120_000})
    body = await resp.json()
    assert resp.status == 200, body
    assert {m["id"]: m["state"] for m in body["models"]} == {i2: "active", i1: "deprecated"}
    [switch] = body["reloaded"]
    assert (switch["pool_id"], switch["model_digest"]) == ("lm", gemma_digest), switch
    # A was running on v1 at the switch and finished there; nothing was ended
    assert (switch["finished"], switch["ended"]) == (1, 0), switch
    assert await _started_digest(run, a) == (smol_digest, ["end"])
    assert run.orch.get(a).tokens_out == 400
    assert await _started_digest(run, b) == (gemma_digest, ["end"])  # queued: ran on v2
    assert [r.state.model_digest for r in pool.ready_replicas()] == [gemma_digest]
    assert not v1_pids & {r.state.pid for r in pool.ready_replicas()}  # a new engine process
    resp = await run.submit(model_ref="lm", prompt="The sky is", max_tokens=4, seed=1)
    assert resp.status == 202, await resp.text()
    assert await _started_digest(run, (await resp.json())["task_id"]) == (gemma_digest, ["end"])
    text = await run.metrics_text()
    assert f'catalog_model_state{{lifecycle="active",model_id="{i2}"}} 1.0' in text
    assert f'catalog_model_state{{lifecycle="deprecated",model_id="{i1}"}} 1.0' in text
    # ORCH-3380: the tasks that ran, per version; ORCH-3382: the digest the pool serves
    assert f'catalog_tasks_total{{lifecycle="active",model_id="{i2}",outcome="completed"}}' in text
    async with run.http.get(run.url + "/v1/capabilities") as r:
        [caps] = [p for p in (await r.json())["pools"] if p["id"] == "lm"]
    assert caps["model_digests"] == [gemma_digest]

    resp = await run.http.post(f"{api}/{i2}/rollback", json={"drain_deadline_ms": 60_000})
    body = await resp.json()
    assert resp.status == 200, body
    assert {m["id"]: m["state"] for m in body["models"]} == {i2: "canary", i1: "active"}
    assert [(s["pool_id"], s["model_digest"]) for s in body["reloaded"]] == [("lm", smol_digest)]
    resp = await run.submit(model_ref="lm", prompt="The sky is", max_tokens=4, seed=1)
    assert resp.status == 202, await resp.text()
    assert await _started_digest(run, (await resp.json())["task_id"]) == (smol_digest, ["end"])
    assert [r.state.model_digest for r in pool.ready_replicas()] == [smol_digest]

    # a canary back to draft: the Active does not change, nothing reloads
    resp = await run.http.post(f"{api}/{i2}/rollback")
    body = await resp.json()
    assert (resp.status, body["reloaded"]) == (200, []), body
    # ORCH-3361: a promote whose reload fails changes nothing (the v3 file changed after
    # registration: refused before any engine starts)
    bad = tmp_path / "v3.gguf"
    bad.write_bytes(b"GGUF" + b"v3" * 512)
    resp = await run.http.post(api, json={"name": "lm", "ref": str(bad), "tags": ["v3"]})
    i3 = (await resp.json())["id"]
    resp = await run.http.post(f"{api}/{i3}/state", json={"state": "canary", "weight": 0.5})
    assert resp.status == 200, await resp.text()
    bad.write_bytes(b"GGUF" + b"v4" * 512)
    v1_replicas = [(r.state.replica_id, r.state.pid) for r in pool.ready_replicas()]
    resp = await run.http.post(f"{api}/{i3}/promote")
    body = await resp.json()
    assert (resp.status, body["code"]) == (403, "UNTRUSTED_ARTIFACT"), body
    states = {e.id: e.state for e in run.orch.catalog.catalog.list()}
    assert states == {i1: "active", i2: "draft", i3: "canary"}
    assert [(r.state.replica_id, r.state.pid) for r in pool.ready_replicas()] == v1_replicas
    del gemma_path, smol_path
