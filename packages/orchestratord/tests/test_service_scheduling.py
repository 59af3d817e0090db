"""Scheduling through HTTP with the mock adapter (issue #4): placement over several
replicas, tenants, deadlines, quotas, watchdog, budgets and predictions."""

from __future__ import annotations

import asyncio
import re
import uuid

from .conftest import finish_eta


async def _tid(run, **body) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    return (await resp.json())["task_id"]


async def test_least_loaded_placement_and_session_affinity(start_orchestrator, mock_config):
    """ORCH-1303/1404/1116: two replicas, two tasks → both replicas; a session stays warm."""
    run = await start_orchestrator(
        mock_config(endpoints=["mock://0", "mock://1"], adapter_options={"token_delay_ms": 5})
    )
    assert len(run.orch.pools["mock"].ready_replicas()) == 2
    a = await _tid(run, max_tokens=30)
    b = await _tid(run, max_tokens=30)
    started = {}
    for tid in (a, b):
        started[tid] = (await run.events(tid))[0][2]["replica_id"]
    assert set(started.values()) == {"mock-e0", "mock-e1"}
    sid = str(uuid.uuid4())
    seen = []
    for _ in range(3):
        tid = await _tid(run, session_id=sid, max_tokens=3)
        events = await run.events(tid)
        seen.append(events[0][2]["replica_id"])
        warm = [e[2]["kv_warmth"] for e in events if e[1] == "metrics" and not finish_eta(e[2])]
        assert warm == [len(seen) > 1]
    assert len(set(seen)) == 1


async def test_tenants_share_by_weight(start_orchestrator, mock_config, tenant_keys):
    """ORCH-1110/1113: tenants 3:1 inside a priority; admission_share is exported."""
    auth, keys = tenant_keys("a", "b", public_metrics=True)  # the tenant comes from the key
    cfg = mock_config(adapter_options={"token_delay_ms": 2}, auth=auth)
    cfg.scheduling.tenants = {"a": msgspec_tenant(3), "b": msgspec_tenant(1)}
    run = await start_orchestrator(cfg)
    blocker = await _tid(run, max_tokens=40, key=keys["a"])
    ids = {}
    for _n in range(6):
        for tenant in ("a", "b"):
            ids[await _tid(run, max_tokens=2, key=keys[tenant], priority="batch")] = tenant
    for tid in ids:
        await run.events(tid, key=keys[ids[tid]])
    await run.events(blocker, key=keys["a"])
    order = sorted(ids, key=lambda t: run.orch.get(t).dispatched)
    assert [ids[t] for t in order][:8] == ["a", "a", "a", "b", "a", "a", "a", "b"]
    text = await run.metrics_text()
    assert re.search(r'admission_share\{[^}]*tenant="a"[^}]*\} 0\.\d+', text)


def msgspec_tenant(weight: int, **kw):
    from llama_orch.core.config import TenantConfig

    return TenantConfig(weight=weight, **kw)


async def test_deadline_unmet_at_admission(start_orchestrator, mock_config):
    """ORCH-1006/1112: with a measured rate an infeasible deadline is a 400; a feasible
    one streams on_time_probability and counts in deadlines_met_ratio."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 5}))
    await run.events(await _tid(run, max_tokens=10))  # measure the rate
    resp = await run.submit(max_tokens=200, deadline_ms=50)
    assert resp.status == 400 and (await resp.json())["code"] == "DEADLINE_UNMET"
    tid = await _tid(run, max_tokens=4, deadline_ms=60_000)
    events = await run.events(tid)
    probs = [
        e[2]["on_time_probability"] for e in events if e[1] == "metrics" and not finish_eta(e[2])
    ]
    assert probs and probs[0] > 0.99
    text = await run.metrics_text()
    assert re.search(r'deadlines_met_ratio\{[^}]*priority="interactive"[^}]*\} 1\.0', text)
    assert re.search(r'tasks_rejected_total\{[^}]*reason="DEADLINE_UNMET"[^}]*\} 1\.0', text)


async def test_quota_rejections_are_typed_and_counted(start_orchestrator, mock_config, tenant_keys):
    """ORCH-1114: rps+burst and max_concurrent per tenant → 429 with policy_label quota."""
    auth, keys = tenant_keys("slow", "other", public_metrics=True)
    cfg = mock_config(auth=auth)
    cfg.scheduling.tenants = {"slow": msgspec_tenant(1, rps=0.01, burst=1)}
    run = await start_orchestrator(cfg)
    await _tid(run, key=keys["slow"], max_tokens=2)
    resp = await run.submit(key=keys["slow"], max_tokens=2)
    assert resp.status == 429
    err = await resp.json()
    assert err["code"] == "ADMISSION_REJECT" and err["policy_label"] == "quota"
    assert int(resp.headers["X-Backoff-Ms"]) > 90_000  # 1 token per 100 s
    assert (await run.submit(key=keys["other"], max_tokens=2)).status == 202
    text = await run.metrics_text()
    assert re.search(r'tasks_rejected_total\{[^}]*policy="quota"[^}]*\} 1\.0', text)
    assert re.search(r'admission_backpressure_events_total\{[^}]*policy="quota"[^}]*\} 1', text)


async def test_watchdog_ends_stuck_task_and_frees_slot(start_orchestrator, mock_config):
    """ORCH-1115: an engine that stops producing ends with DECODE_TIMEOUT; slot freed."""
    cfg = mock_config(adapter_options={"fail": "hang_after:2"})
    cfg.scheduling.watchdog.idle_timeout_s = 0.2
    run = await start_orchestrator(cfg)
    tid = await _tid(run, max_tokens=10)
    events = await run.events(tid)
    assert [e[1] for e in events].count("token") == 2
    assert events[-1][1] == "error" and events[-1][2]["code"] == "DECODE_TIMEOUT"
    await asyncio.wait_for(run.orch.get(tid).runner, 2)
    replica = next(iter(run.orch.pools["mock"].replicas.values()))
    assert replica.busy == 0 and replica.adapter.busy_slots == 0


async def test_session_token_budget(start_orchestrator, mock_config):
    """ORCH-1405: budgets in X-Budget-* headers and metrics; over budget → 400."""
    cfg = mock_config()
    cfg.sessions.token_budget = 40
    run = await start_orchestrator(cfg)
    sid = str(uuid.uuid4())
    resp = await run.submit(session_id=sid, prompt="a b", max_tokens=10)
    assert resp.status == 202
    tid = (await resp.json())["task_id"]
    expected = 40 - run.orch.get(tid).prompt_tokens - 10  # reserved: prompt + max_tokens
    assert int(resp.headers["X-Budget-Tokens-Remaining"]) == expected
    assert resp.headers["X-Budget-Turns-Remaining"] == "7"
    events = await run.events(tid)
    left = [
        e[2]["budget_tokens_remaining"]
        for e in events
        if e[1] == "metrics" and not finish_eta(e[2])
    ]
    assert left == [expected]
    resp = await run.submit(session_id=sid, prompt="a b", max_tokens=30)
    assert resp.status == 400 and "budget" in (await resp.json())["message"]


async def test_queued_session_task_that_ends_unrun_returns_its_reservation(
    start_orchestrator, mock_config
):
    """ORCH-1405: canceling a queued session turn gives its reserved tokens back."""
    cfg = mock_config(adapter_options={"token_delay_ms": 10})
    cfg.sessions.token_budget = 100
    run = await start_orchestrator(cfg)
    blocker = await _tid(run, max_tokens=200)  # holds the only slot
    sid = str(uuid.uuid4())
    resp = await run.submit(session_id=sid, prompt="a b", max_tokens=40)
    queued = (await resp.json())["task_id"]
    before = int(resp.headers["X-Budget-Tokens-Remaining"])
    assert run.orch.get(queued).state == "queued"
    async with run.http.post(f"{run.url}/v1/tasks/{queued}/cancel") as r:
        assert r.status == 204
    resp = await run.submit(session_id=sid, prompt="a b", max_tokens=40)
    assert resp.status == 202
    # the canceled turn's reservation came back: the same cost leaves the same budget
    assert int(resp.headers["X-Budget-Tokens-Remaining"]) == before
    async with run.http.post(f"{run.url}/v1/tasks/{blocker}/cancel") as r:
        assert r.status == 204


async def test_predictions_within_factor_two_of_observed(start_orchestrator, mock_config):
    """ORCH-1105 acceptance: predicted_start_ms and X-Backoff-Ms vs observed waits."""
    run = await start_orchestrator(
        mock_config(admission={"queue_capacity": 3}, adapter_options={"token_delay_ms": 4})
    )
    for _ in range(2):  # steady state: the rate is measured
        await run.events(await _tid(run, max_tokens=25))
    accepted = []
    for _ in range(4):
        resp = await run.submit(max_tokens=25)
        accepted.append(await resp.json())
    full = await run.submit(max_tokens=25)
    assert full.status == 429
    backoff = int(full.headers["X-Backoff-Ms"])
    t0 = asyncio.get_running_loop().time()
    first_end = await run.events(accepted[0]["task_id"])
    waited_ms = (asyncio.get_running_loop().time() - t0) * 1000
    assert first_end[-1][1] == "end"
    assert waited_ms / 2 <= backoff <= waited_ms * 2 + 20
    print(f"X-Backoff-Ms {backoff} vs observed {waited_ms:.0f} ms")
    for acc in accepted[1:]:
        events = await run.events(acc["task_id"])
        started = next(e[2] for e in events if e[1] == "started")  # after `queued` events
        observed, predicted = started["queue_wait_ms"], acc["predicted_start_ms"]
        assert observed / 2 <= predicted <= observed * 2, (observed, predicted)
        print(f"predicted_start_ms {predicted} vs queue_wait_ms {observed}")


async def test_saturation_shares_through_http(start_orchestrator, mock_config, tenant_keys):
    """ORCH-1113 acceptance through orchestratord: tenants 3:1 and priorities 8:1 under
    saturation; dispatch counts and the exported admission_share within ±10 %."""
    auth, keys = tenant_keys("a", "b", "z", public_metrics=True)  # tenants come from keys
    cfg = mock_config(
        admission={"queue_capacity": 400},
        adapter_options={"token_delay_ms": 1, "ctx": 9000},
        auth=auth,
    )
    cfg.scheduling.tenants = {"a": msgspec_tenant(3), "b": msgspec_tenant(1)}
    run = await start_orchestrator(cfg)
    blocker = await _tid(run, key=keys["z"], max_tokens=8000)  # holds the only slot
    weights = {
        ("interactive", "a"): 8 / 9 * 3 / 4,
        ("interactive", "b"): 8 / 9 * 1 / 4,
        ("batch", "a"): 1 / 9 * 3 / 4,
        ("batch", "b"): 1 / 9 * 1 / 4,
    }
    total = 360  # proportional backlogs: every class stays backlogged to the end
    classes = [(p, t) for (p, t), w in weights.items() for _ in range(round(w * total))]
    ids: dict[str, tuple[str, str]] = {}
    for start in range(0, len(classes), 20):
        chunk = classes[start : start + 20]
        got = await asyncio.gather(
            *(_tid(run, key=keys[t], priority=p, max_tokens=1) for p, t in chunk)
        )
        ids.update(dict(zip(got, chunk, strict=True)))
    assert run.orch.get(blocker).state == "running"  # saturated: nothing else ran yet
    cancel_as_z = {"Authorization": f"Bearer {keys['z']}"}
    async with run.http.post(f"{run.url}/v1/tasks/{blocker}/cancel", headers=cancel_as_z) as r:
        assert r.status == 204
    await _wait_all_done(run, ids)
    order = sorted(ids, key=lambda t: run.orch.get(t).dispatched or 0.0)
    window = 300  # while every class still had queued work
    for cls, w in weights.items():
        count = sum(1 for t in order[:window] if ids[t] == cls)
        assert abs(count - w * window) <= 0.1 * w * window + 0.5, (cls, count, w * window)
    text = await run.metrics_text()
    for (prio, tenant), w in weights.items():
        m = re.search(
            rf'admission_share\{{[^}}]*priority="{prio}",tenant="{tenant}"[^}}]*\}} ([0-9.e-]+)',
            text,
        )
        assert m is not None, text
        assert abs(float(m.group(1)) - w) <= 0.1 * w, (prio, tenant, m.group(1), w)


async def _wait_all_done(run, ids) -> None:
    await run.until(lambda: all(run.orch.get(t).terminal for t in ids), 30)
