"""Policies through orchestratord's HTTP API with the mock engine (issue #16,
ORCH-8521..8524, ORCH-8542, ORCH-8550). The real-engine acceptance is in
``test_policies_real.py``."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.core.policy_config import PoliciesConfig
from llama_orch.policy_sdk.build import cached_build

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "policies"


def _metrics_lint() -> Any:
    name = "llama_orch_tools_metrics_lint"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "metrics_lint.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def example_module(name: str, **kw: Any) -> dict[str, Any]:
    """A ``policies.modules`` entry for an example policy, built from C when needed."""
    src = EXAMPLES / f"{name}.c"
    path = cached_build(src) if src.is_file() else EXAMPLES / f"{name}.wat"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"name": name.replace("_", "-"), "path": str(path), "sha256": digest, **kw}


def with_policies(cfg: Config, policies: dict[str, Any]) -> Config:
    cfg.policies = msgspec.convert(policies, PoliciesConfig)
    return cfg


async def _tid(run, **body) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    return (await resp.json())["task_id"]


async def test_shed_policy_429_carries_policy_label_and_retry_after(
    start_orchestrator, mock_config
):
    """ORCH-8522: batch shed at 75 % queue fill: 429 ADMISSION_REJECT, policy_label
    names the policy, Retry-After from retry_after_ms; interactive still admitted."""
    cfg = mock_config(adapter_options={"token_delay_ms": 50}, admission={"queue_capacity": 4})
    cfg = with_policies(
        cfg,
        {
            "modules": [example_module("shed_batch")],
            "admission": {"policy": "shed-batch", "on_error": "closed"},
        },
    )
    run = await start_orchestrator(cfg)
    running = await _tid(run, max_tokens=50, priority="batch")  # occupies the one slot
    for _ in range(3):  # 3 of 4 queued: 75 %
        await _tid(run, max_tokens=2, priority="batch")
    resp = await run.submit(max_tokens=2, priority="batch")
    body = await resp.json()
    assert resp.status == 429, body
    assert body["code"] == "ADMISSION_REJECT" and body["policy_label"] == "shed-batch"
    assert body["retry_after_ms"] == 2000 and resp.headers["Retry-After"] == "2"
    await _tid(run, max_tokens=2, priority="interactive")  # never shed
    run.orch.cancel(running)
    text = await run.metrics_text()
    assert re.search(r'policy_calls_total\{[^}]*outcome="reject"[^}]*policy="shed-batch"', text)
    assert re.search(r'policy_calls_total\{[^}]*outcome="admit"', text)
    assert "policy_decision_ms_bucket" in text
    assert re.search(r'tasks_rejected_total\{[^}]*policy="shed-batch"', text)


async def test_clamp_policy_rewrites_a_crowding_tenants_interactive_work(
    start_orchestrator, mock_config, tenant_keys
):
    """ORCH-8522: the C tenant clamp turns the crowding tenant's 3rd and 4th interactive
    tasks into batch, so they start after the other tenant's; without it they
    interleave (the same submissions, side by side)."""
    auth, keys = tenant_keys("hog", "fair")
    clamp = {"modules": [example_module("tenant_clamp")], "admission": {"policy": "tenant-clamp"}}
    orders = {}
    for label, policies in (("plain", {}), ("clamp", clamp)):
        cfg = with_policies(mock_config(adapter_options={"token_delay_ms": 5}, auth=auth), policies)
        run = await start_orchestrator(cfg)
        blocker = await _tid(run, max_tokens=60, key=keys["fair"], priority="batch")
        hog = [await _tid(run, max_tokens=2, key=keys["hog"]) for _ in range(4)]
        fair = [await _tid(run, max_tokens=2, key=keys["fair"]) for _ in range(3)]
        names = {t: f"h{n + 1}" for n, t in enumerate(hog)}
        names |= {t: f"f{n + 1}" for n, t in enumerate(fair)}
        for t in (blocker, *hog, *fair):
            await run.events(t, key=keys["hog" if t in hog else "fair"])
        orders[label] = [names[t] for t in sorted(names, key=lambda t: run.orch.get(t).dispatched)]
        if label == "clamp":
            # in flight before each: 0 of 1, 1 of 2 (50 %, not above), 2 of 3, 3 of 4
            assert [run.orch.get(t).priority for t in hog] == ["interactive"] * 2 + ["batch"] * 2
    assert orders["plain"] == ["h1", "f1", "h2", "f2", "h3", "f3", "h4"], orders
    assert orders["clamp"] == ["h1", "f1", "h2", "f2", "f3", "h3", "h4"], orders


async def test_placement_policy_picks_the_labelled_replica(start_orchestrator, mock_config):
    """ORCH-8523: the label policy's choice shows in the started event's replica_id."""
    cfg = mock_config(endpoints=["mock://0", "mock://1"], adapter_options={"token_delay_ms": 1})
    cfg = with_policies(
        cfg,
        {
            "modules": [example_module("place_by_label")],
            "placement": {"policy": "place-by-label"},
            "replica_labels": {"mock-e1": {"tier": "fast"}},
        },
    )
    run = await start_orchestrator(cfg)
    for _ in range(3):  # one at a time: both replicas are free each time
        tid = await _tid(run, max_tokens=2)
        events = await run.events(tid)
        assert events[0][1] == "started" and events[0][2]["replica_id"] == "mock-e1"


async def test_native_policy_by_entry_point_name(start_orchestrator, mock_config):
    """ORCH-8517, ORCH-0006: config names a native policy by its entry point."""
    cfg = mock_config(adapter_options={"token_delay_ms": 1})
    cfg = with_policies(
        cfg,
        {
            "modules": [
                {"name": "clamp-py", "entry_point": "tenant-clamp-py", "config": {"share_pct": 0}}
            ],
            "admission": {"policy": "clamp-py"},
        },
    )
    run = await start_orchestrator(cfg)
    tid = await _tid(run, max_tokens=2)  # share 0 %: the first task is already over
    assert run.orch.get(tid).priority == "interactive"  # 0 in flight: 0 > 0 is false
    await run.events(tid)
    assert run.orch.policies.calls["clamp-py", "admission", "admit"] == 1


@pytest.mark.parametrize(("on_error", "status"), [("open", 202), ("closed", 429)])
async def test_failing_policy_ends_in_the_hooks_outcome(
    start_orchestrator, mock_config, tenant_keys, tmp_path, on_error, status
):
    """ORCH-8550, ORCH-8513: a spinning policy is stopped; open admits, closed rejects
    with the policy's label; the failure is counted in policy_traps_total; the next
    call succeeds in a fresh instance."""
    fixtures = Path(__file__).resolve().parent / "fixtures"  # copies of policy-host's
    # The fixture spins when the snapshot holds '~'; here: 'Z' (90), from tenant "Zed".
    spin = tmp_path / "spin.wat"
    spin.write_text(
        (fixtures / "spin.wat").read_text().replace("(i32.const 126)", "(i32.const 90)")
    )
    digest = hashlib.sha256(spin.read_bytes()).hexdigest()
    auth, keys = tenant_keys("Zed", "ok", public_metrics=True)
    cfg = mock_config(adapter_options={"token_delay_ms": 1}, auth=auth)
    cfg = with_policies(
        cfg,
        {
            "modules": [{"name": "spin", "path": str(spin), "sha256": digest}],
            "admission": {"policy": "spin", "on_error": on_error},
        },
    )
    run = await start_orchestrator(cfg)
    resp = await run.submit(max_tokens=2, key=keys["Zed"])
    body = await resp.json()
    assert resp.status == status, body
    if status == 429:
        assert body["policy_label"] == "spin" and resp.headers["Retry-After"]
    text = await run.metrics_text()
    assert re.search(r'policy_traps_total\{code="out_of_fuel",policy="spin"\} 1\.0', text)
    outcome = f'policy_calls_total{{hook="admission",outcome="error_{on_error}",policy="spin"}} 1.0'
    assert outcome in text
    ok = await run.submit(max_tokens=2, key=keys["ok"])
    assert ok.status == 202, await ok.text()
    # ORCH-8542: the policy series pass the metrics lint (names, types, labels, budgets)
    lint = _metrics_lint()
    text = await run.metrics_text()
    assert lint.lint(text, lint.load_lint(), set()) == []
    types, _ = lint.parse(text)
    assert {"policy_calls_total", "policy_decision_ms", "policy_traps_total"} <= set(types)


async def test_reload_through_the_control_plane_and_sighup(
    start_orchestrator, mock_config, tmp_path
):
    """ORCH-8570, ORCH-8571: a module failing to verify never replaces the running one; a good
    set swaps in; SIGHUP's handler reloads the config file's `policies`."""
    from llama_orch.orchestratord.main import _reload

    shed = example_module("shed_batch")
    cfg = mock_config(adapter_options={"token_delay_ms": 1})
    cfg = with_policies(cfg, {"modules": [shed], "admission": {"policy": "shed-batch"}})
    run = await start_orchestrator(cfg)
    url = run.url + "/v1/policies/reload"
    bad = {**example_module("tenant_clamp"), "sha256": "0" * 64}
    async with run.http.post(
        url, json={"modules": [bad], "admission": {"policy": "tenant-clamp"}}
    ) as resp:
        body = await resp.json()
        assert resp.status == 400 and "sha256" in body["message"], body
    assert [n for n, _k, _s in run.orch.policies.loaded()] == ["shed-batch"]
    clamp = example_module("tenant_clamp")
    async with run.http.post(
        url, json={"modules": [clamp], "admission": {"policy": "tenant-clamp"}}
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["policies"] == [{"name": "tenant-clamp", "kind": "wasm", "sha256": clamp["sha256"]}]
    hook = {"policy": "tenant-clamp", "on_error": "open", "budget_ms": 20.0}
    assert (body["admission"], body["placement"]) == (hook, None)
    async with run.http.get(run.url + "/v1/policies") as resp:  # ORCH-8572
        assert resp.status == 200 and await resp.json() == body
    await _tid(run, max_tokens=2)
    assert run.orch.policies.calls["tenant-clamp", "admission", "admit"] == 1
    # SIGHUP: the file names the shed policy again
    path = tmp_path / "orch.json"
    doc = msgspec.to_builtins(run.orch.config)
    doc["policies"] = {"modules": [shed], "admission": {"policy": "shed-batch"}}
    path.write_bytes(msgspec.json.encode(doc))
    _reload([run.orch], str(path))
    assert [n for n, _k, _s in run.orch.policies.loaded()] == ["shed-batch"]
    path.write_text("{not json")
    _reload([run.orch], str(path))  # logged, running set kept
    assert [n for n, _k, _s in run.orch.policies.loaded()] == ["shed-batch"]
    async with run.http.post(url, json={}) as resp:  # no hook: policies off
        assert resp.status == 200
        assert await resp.json() == {"policies": [], "admission": None, "placement": None}


async def test_policy_403_carries_its_label(start_orchestrator, mock_config, tmp_path):
    """ORCH-8522, ORCH-8524: `status: 403` answers 403 FORBIDDEN with policy_label."""
    fixtures = Path(__file__).resolve().parent / "fixtures"  # copies of policy-host's
    out = '{"action":"reject","reason":"not here","status":403}'
    wat = tmp_path / "deny.wat"
    wat.write_text(
        (fixtures / "admit.wat")
        .read_text()
        .replace('"{\\"action\\":\\"admit\\"}"', '"' + out.replace('"', '\\"') + '"')
        .replace("(i64.const 18)))\n)", f"(i64.const {len(out)})))\n)")
        .replace('(data (i32.const 64) "{\\"action\\":\\"maybe\\"}")', "")  # overlaps
    )
    digest = hashlib.sha256(wat.read_bytes()).hexdigest()
    cfg = with_policies(
        mock_config(),
        {
            "modules": [{"name": "deny", "path": str(wat), "sha256": digest}],
            "admission": {"policy": "deny"},
        },
    )
    run = await start_orchestrator(cfg)
    resp = await run.submit(max_tokens=2)
    body = await resp.json()
    assert resp.status == 403 and body["code"] == "FORBIDDEN", body
    assert body["policy_label"] == "deny" and "not here" in body["message"]
