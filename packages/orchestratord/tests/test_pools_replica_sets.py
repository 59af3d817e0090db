"""Replicas with different engine versions never share a replica set (ORCH-1302).

One pool, two mock replicas; the pool manager then reports one of them with a
new ``engine_version`` (as after upgrading one host). The two must show up as
separate sets, and a strict-determinism session must stay on its set, waiting
for it, rather than continue on the other version.
"""

from __future__ import annotations

import uuid

import msgspec


async def test_engine_versions_split_sets_and_strict_sessions_stay(start_orchestrator, mock_config):
    cfg = mock_config(endpoints=["mock://0", "mock://1"], adapter_options={"token_delay_ms": 5})
    run = await start_orchestrator(cfg)
    pool = run.orch.pools["mock"]
    assert len(pool.ready_replicas()) == 2
    upgraded = msgspec.structs.replace(pool.states["mock-e1"], engine_version="mock-2")
    run.orch.on_replica_change(upgraded)

    async with run.http.get(run.url + "/v1/replicasets") as r:
        sets = (await r.json())["replica_sets"]
    assert sorted((s["engine_version"], s["replicas"]) for s in sets) == [
        ("mock-1", ["mock-e0"]),
        ("mock-2", ["mock-e1"]),
    ]

    session = str(uuid.uuid4())
    first = await run.submit(session_id=session, determinism="strict", max_tokens=4, seed=1)
    events = await run.events((await first.json())["task_id"])
    home = events[0][2]["replica_id"]
    home_version = events[0][2]["engine_version"]

    # Occupy the home replica; the other version stays free.
    blocker = await run.submit(max_tokens=60, pool_id="mock")
    blocker_id = (await blocker.json())["task_id"]
    await run.until(lambda: run.orch.get(blocker_id).replica_id is not None)
    if run.orch.get(blocker_id).replica_id != home:
        # Least-loaded placement put it elsewhere: occupy the home one explicitly.
        await run.http.post(f"{run.url}/v1/tasks/{blocker_id}/cancel")
        blocker = await run.submit(max_tokens=60, session_id=session, determinism="strict")
        blocker_id = (await blocker.json())["task_id"]

    second = await run.submit(session_id=session, determinism="strict", max_tokens=4, seed=2)
    second_events = await run.events((await second.json())["task_id"])
    started = next(e[2] for e in second_events if e[1] == "started")  # after `queued` events
    assert started["replica_id"] == home
    assert started["engine_version"] == home_version
    assert started["queue_wait_ms"] > 50  # it waited for its set, the other one was free
    assert run.orch.get(blocker_id).state in ("completed", "running")
