"""Control plane on mock replicas: drain with a deadline, replica sets, reload refusal."""

from __future__ import annotations

import asyncio

from llama_orch.core.errors import ErrorCode


async def test_drain_ends_running_and_queued_tasks_typed_at_the_deadline(
    start_orchestrator, mock_config
):
    """ORCH-1604, ORCH-POOL-3012: no new admission; leftovers end POOL_UNAVAILABLE."""
    run = await start_orchestrator(mock_config(adapter_options={"slots": 1, "token_delay_ms": 20}))
    r1 = await run.submit(max_tokens=400)
    r2 = await run.submit(max_tokens=400)
    t1, t2 = (await r1.json())["task_id"], (await r2.json())["task_id"]
    await run.until(lambda: run.orch.get(t1).state == "running")
    assert run.orch.get(t2).state == "queued"  # the only slot is taken
    drain = asyncio.create_task(
        run.http.post(run.url + "/v1/pools/mock/drain", json={"deadline_ms": 600})
    )
    async with asyncio.timeout(30):  # the drain request reached its handler (a pool flag)
        while not run.orch.pools["mock"].draining:
            await asyncio.sleep(0.01)
    refused = await run.submit(max_tokens=4)
    assert refused.status == 503 and (await refused.json())["code"] == "POOL_UNAVAILABLE"
    resp = await drain
    body = await resp.json()
    assert resp.status == 200, body
    assert body["ended"] == 2 and body["finished"] == 0 and 500 <= body["waited_ms"] < 3000
    for tid in (t1, t2):
        events = await run.events(tid)
        terminal = [e for e in events if e[1] in ("end", "error")]
        assert len(terminal) == 1 and terminal[0][1] == "error"
        assert terminal[0][2]["code"] == ErrorCode.POOL_UNAVAILABLE
    health = await (await run.http.get(run.url + "/v1/pools/mock/health")).json()
    assert health["draining"] is True and {s["status"] for s in health["replicas"]} == {"draining"}


async def test_drain_lets_running_tasks_finish_before_the_deadline(start_orchestrator, mock_config):
    """ORCH-1604: a task that finishes in time ends normally."""
    run = await start_orchestrator(mock_config(adapter_options={"slots": 2, "token_delay_ms": 5}))
    tid = (await (await run.submit(max_tokens=20)).json())["task_id"]
    resp = await run.http.post(run.url + "/v1/pools/mock/drain", json={"deadline_ms": 10_000})
    body = await resp.json()
    assert body["ended"] == 0 and body["finished"] == 1
    events = await run.events(tid)
    assert events[-1][1] == "end"


async def test_drain_and_reload_validate_input(start_orchestrator, mock_config):
    run = await start_orchestrator(mock_config())
    bad = await run.http.post(run.url + "/v1/pools/mock/drain", json={"deadline_ms": -1})
    assert bad.status == 400 and (await bad.json())["code"] == "INVALID_PARAMS"
    missing = await run.http.post(run.url + "/v1/pools/nope/drain", json={})
    assert missing.status == 404
    reload = await run.http.post(
        run.url + "/v1/pools/mock/reload", json={"new_model_ref": "pypi:x"}
    )
    body = await reload.json()
    assert reload.status == 503 and body["code"] == "POOL_UNAVAILABLE", body


async def test_replicasets_group_ready_replicas_with_load(start_orchestrator, mock_config):
    """ORCH-1606: one set per set_key, with slots, busy, load and queued."""
    run = await start_orchestrator(mock_config(adapter_options={"slots": 2, "token_delay_ms": 20}))
    tid = (await (await run.submit(max_tokens=100)).json())["task_id"]
    await run.until(lambda: run.orch.get(tid).state == "running")
    body = await (await run.http.get(run.url + "/v1/replicasets")).json()
    (rs,) = body["replica_sets"]
    assert rs["engine"] == "mock" and rs["model_digest"] == "mock-digest"
    assert rs["pool_ids"] == ["mock"] and rs["slots"] == 2 and rs["busy"] == 1
    assert rs["load"] == 0.5 and rs["queued"] == 0
