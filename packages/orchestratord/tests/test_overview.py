"""Admin read routes for operators, on mock replicas (ORCH-5120..ORCH-5124)."""

from __future__ import annotations

from llama_orch.core.config import Config

from .conftest import bearer  # type: ignore[import-not-found]

SID = "6f0e8b9a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"


async def _running(run, key: str, task_id: str) -> None:  # type: ignore[no-untyped-def]
    await run.until(lambda: run.orch.get(task_id).state == "running")
    async with run.http.get(f"{run.url}/v1/tasks/{task_id}", headers=bearer(key)) as r:
        assert (await r.json())["state"] == "running"  # the tenant's view says so too


def _config(mock_config, tenant_keys) -> tuple[Config, dict[str, str]]:  # type: ignore[no-untyped-def]
    auth, keys = tenant_keys("alpha", "beta")
    cfg = mock_config(
        auth=auth,
        adapter_options={"slots": 1, "token_delay_ms": 20},
        admission={"queue_capacity": 8},
    )
    return cfg, keys


async def test_status_lists_and_tails_tasks_of_every_tenant(
    start_orchestrator, mock_config, tenant_keys
):
    """ORCH-5120, ORCH-5121, ORCH-5122: one admin sees both tenants' tasks."""
    import msgspec

    cfg, keys = _config(mock_config, tenant_keys)
    cfg = msgspec.structs.replace(
        cfg,
        scheduling=msgspec.convert({"tenants": {"alpha": {"weight": 3}}}, type(cfg.scheduling)),
    )
    run = await start_orchestrator(cfg)
    admin = bearer(keys["admin"])
    a = await (await run.submit(key=keys["alpha"], max_tokens=400)).json()
    await _running(run, keys["alpha"], a["task_id"])
    b = await (await run.submit(key=keys["beta"], max_tokens=3, priority="batch")).json()

    async with run.http.get(run.url + "/v1/admin/status", headers=admin) as r:
        assert r.status == 200
        status = await r.json()
    (pool,) = status["pools"]
    assert pool["queue_depth"] == 1 and pool["queued"] == {"batch": 1} and pool["running"] == 1
    (replica,) = pool["replicas"]
    assert replica["busy"] == 1 and replica["circuit_open"] is False
    tenants = {t["tenant"]: t for t in status["tenants"]}
    assert tenants["alpha"]["weight"] == 3 and tenants["alpha"]["running"] == 1
    assert tenants["beta"]["weight"] == 1 and tenants["beta"]["queued"] == 1
    assert tenants["alpha"]["share"]["interactive"] > 0
    assert status["tasks"]["running"] == 1 and status["tasks"]["queued"] == 1

    async with run.http.get(run.url + "/v1/admin/tasks", headers=admin) as r:
        listed = await r.json()
    assert listed["total"] == 2
    assert [t["task_id"] for t in listed["tasks"]] == [b["task_id"], a["task_id"]]  # newest first
    assert listed["tasks"][0]["queue_position"] == 0
    async with run.http.get(
        run.url + "/v1/admin/tasks", params={"tenant": "beta", "state": "active"}, headers=admin
    ) as r:
        assert [t["tenant"] for t in (await r.json())["tasks"]] == ["beta"]
    async with run.http.get(run.url + "/v1/admin/tasks?limit=0", headers=admin) as r:
        assert r.status == 400 and (await r.json())["code"] == "INVALID_PARAMS"

    # an admin cancels alpha's task; the freed slot goes to beta's
    async with run.http.post(f"{run.url}/v1/admin/tasks/{a['task_id']}/cancel", headers=admin) as r:
        assert r.status == 204
    events = []
    async with run.http.get(f"{run.url}/v1/admin/tasks/{b['task_id']}/stream", headers=admin) as r:
        assert r.status == 200
        async for line in r.content:
            if line.startswith(b"event: "):
                events.append(line[7:].strip().decode())
    # beta's task waited behind alpha's: `queued` events (ORCH-1961) may come first
    events = [e for e in events if e != "queued"]
    assert events[0] == "started" and events[-1] == "end", events
    async with run.http.get(f"{run.url}/v1/admin/tasks/{a['task_id']}", headers=admin) as r:
        assert (await r.json())["state"] == "canceled"
    async with run.http.get(f"{run.url}/v1/admin/tasks/nope", headers=admin) as r:
        assert r.status == 404


async def test_sessions_of_every_tenant_and_admin_only(
    start_orchestrator, mock_config, tenant_keys
):
    """ORCH-5123, ORCH-5124."""
    cfg, keys = _config(mock_config, tenant_keys)
    run = await start_orchestrator(cfg)
    for tenant in ("alpha", "beta"):
        resp = await run.submit(key=keys[tenant], max_tokens=2, session_id=SID)
        assert resp.status == 202
        await run.events((await resp.json())["task_id"], key=keys[tenant])
    async with run.http.get(run.url + "/v1/admin/sessions", headers=bearer(keys["admin"])) as r:
        sessions = (await r.json())["sessions"]
    assert [(s["tenant"], s["session_id"], s["turns"]) for s in sessions] == [
        ("alpha", SID, 1),
        ("beta", SID, 1),
    ]
    for path in ("/v1/admin/status", "/v1/admin/tasks", "/v1/admin/sessions"):
        async with run.http.get(run.url + path, headers=bearer(keys["alpha"])) as r:
            assert r.status == 403 and (await r.json())["code"] == "FORBIDDEN"
        async with run.http.get(run.url + path) as r:
            assert r.status == 401
