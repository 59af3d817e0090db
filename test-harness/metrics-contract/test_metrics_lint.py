"""The metrics lint (ORCH-7010..ORCH-7014) on a live mock run, and proof that it fails.

The scrape comes from a real orchestratord (mock engine) after a task ran, a
task was canceled and one submission was refused. The lint passes on it, and
fails on the same page with a renamed metric, a missing ``engine`` label, an
unlisted label, a wrong type, or a label budget exceeded.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import msgspec
import pytest
from llama_orch.core.config import Config

ROOT = Path(__file__).resolve().parents[2]

_CONTRACT_NAMES = {
    # ORCH-1502 and ORCH-1505 / ARCHITECTURE §8: every name is in the lint file
    "tasks_enqueued_total", "tasks_started_total", "tasks_canceled_total",
    "tasks_rejected_total", "tokens_in_total", "tokens_out_total",
    "admission_backpressure_events_total", "catalog_verifications_total",
    "preemptions_total", "resumptions_total", "queue_depth", "kv_cache_usage_ratio",
    "gpu_utilization", "vram_used_bytes", "model_state", "admission_share",
    "deadlines_met_ratio", "latency_first_token_ms", "latency_decode_ms",
    # ORCH-8542: policy decisions (issue #16)
    "policy_calls_total", "policy_decision_ms", "policy_traps_total",
    # ORCH-1966: queued tasks ended by a bounded wait, by reason (issue #19)
    "tasks_expired_total",
    # ORCH-9212: embedding requests served through a frontend (issue #15)
    "embeddings_total",
    # ORCH-2531: the shared state store (issue #13)
    "state_store_op_ms", "state_store_appends_refused_total", "state_store_leases_lost_total",
    "state_store_takeovers_total",
    # ORCH-2320, ORCH-2322, ORCH-2336: placement and migration (issue #17)
    "placement_decisions_total", "migrations_total", "prefix_hit_ratio",
    # ORCH-3331: tasks routed to a catalog model version (issue #18)
    "catalog_routed_total",
    # ORCH-3365: the lifecycle state of each catalog model version (issue #18)
    "catalog_model_state",
    # ORCH-3380: what ran on each catalog model version (issue #18)
    "catalog_tasks_total", "catalog_latency_first_token_ms", "catalog_tokens_out_total",
    # ORCH-8017..8019: refused requests and cut or refused streams (TODO #9)
    "auth_refused_total", "streams_cut_total", "streams_refused_total",
}  # fmt: skip


def _config(adapter_options: dict[str, object] | None = None, **sections: object) -> Config:
    """One mock pool `main` (`adapter_options` its options); `sections` replace or add
    top-level config sections."""
    doc: dict[str, object] = {
        "server": {"port": 0, "shutdown_grace_s": 1.0},
        "auth": {"enabled": False},  # ORCH-8001: explicit, tests only
        "pools": [
            {
                "id": "main",
                "engine": "mock",
                "model": "mock-model",
                "endpoints": ["mock://0"],
                "adapter_options": adapter_options or {"token_delay_ms": 20},
            }
        ],
    }
    doc.update(sections)
    return msgspec.convert(doc, Config)


@pytest.fixture
async def scrape(start_orchestrator) -> str:
    orch = await start_orchestrator(
        _config(
            {"token_delay_ms": 2, "eos_after": 6}, observability={"engine_scrape_interval_s": 0.1}
        )
    )
    await orch.wait_ready("main")
    status, body, _ = await orch.submit(
        prompt="hello", max_tokens=6, deadline_ms=60_000, priority="interactive"
    )
    assert status == 202, body
    events = await orch.events(body["task_id"])
    assert events[-1][1] == "end"
    status, body, _ = await orch.submit(prompt="x", max_tokens=10**9)  # refused: 400
    assert status == 400, body
    tid = str(uuid.uuid4())
    status, body, _ = await orch.submit(task_id=tid, prompt="x", max_tokens=200)
    assert status == 202, body
    async with orch.http.post(f"{orch.url}/v1/tasks/{tid}/cancel") as resp:
        assert resp.status == 204
    await asyncio.sleep(0.5)  # engine scrapes run every 0.1 s: let one see the Ready replica
    status, text = await orch.get("/metrics")
    assert status == 200
    return text


def test_lint_file_lists_the_contract(lint_doc):
    """ORCH-7010: the lint file names exactly the metrics of ARCHITECTURE §8."""
    assert set(lint_doc["metrics"]) == _CONTRACT_NAMES
    for name, spec in lint_doc["metrics"].items():
        # policy and state-store series are per instance, not per engine
        # catalog_routed_total counts a routing decision made before a pool (and so an
        # engine) is chosen: it is per model version (ORCH-3331)
        per_engine = name not in (
            "admission_share",
            "catalog_routed_total",
            "catalog_model_state",  # per catalog entry, not per engine (ORCH-3365)
            # per catalog model version, not per engine (ORCH-3380)
            "catalog_tasks_total",
            "catalog_latency_first_token_ms",
            "catalog_tokens_out_total",
            # refused before any pool is chosen, per tenant (ORCH-8017..8019)
            "auth_refused_total",
            "streams_cut_total",
            "streams_refused_total",
        ) and not (name.startswith(("policy_", "state_store_")))
        if spec["presence"] not in ("reserved",) and per_engine:
            assert "engine" in spec["labels"], name  # per-engine series carry engine
        for label in spec["labels"]:
            assert label in lint_doc["label_budgets"] or label == "result", (name, label)


async def test_live_scrape_passes_the_lint(scrape, metrics_lint, lint_doc):
    """ORCH-7011 on a mock run: no unlisted, mislabelled or over-budget series."""
    problems = metrics_lint.lint(scrape, lint_doc, {"always", "after_task"})
    assert problems == []
    types, _ = metrics_lint.parse(scrape)
    for name in ("tasks_canceled_total", "tasks_rejected_total", "deadlines_met_ratio"):
        assert name in types  # the on_event metrics this run triggered
    assert "gpu_utilization" not in types and "vram_used_bytes" not in types  # no GPU here


async def test_lint_fails_on_a_renamed_metric(scrape, metrics_lint, lint_doc):
    """ORCH-7012: renaming a metric is caught twice: unlisted name, missing contract name."""
    renamed = re.sub(r"\btasks_enqueued_total\b", "tasks_enqueued_count_total", scrape)
    assert renamed != scrape
    problems = metrics_lint.lint(renamed, lint_doc, {"always", "after_task"})
    assert any(p.startswith("tasks_enqueued_count_total: not in the lint file") for p in problems)
    assert "tasks_enqueued_total: missing (presence after_task)" in problems


async def test_lint_fails_on_a_missing_engine_label(scrape, metrics_lint, lint_doc):
    """ORCH-7012: a series without its ``engine`` label is caught."""
    lines = scrape.splitlines()
    idx = next(i for i, line in enumerate(lines) if line.startswith("tokens_out_total{"))
    lines[idx] = re.sub(r'engine="[^"]*",?', "", lines[idx], count=1)
    assert 'engine="' not in lines[idx]
    problems = metrics_lint.lint("\n".join(lines), lint_doc, {"always", "after_task"})
    assert len(problems) == 1 and "tokens_out_total" in problems[0]
    assert "lacks the label 'engine'" in problems[0]


async def test_lint_fails_on_extra_label_type_and_budget(scrape, metrics_lint, lint_doc):
    """ORCH-7013: unlisted label, wrong type and an exceeded cardinality budget are caught."""
    extra = scrape.replace("queue_depth{", 'queue_depth{prompt="secret",', 1)
    assert any("unlisted label 'prompt'" in p for p in metrics_lint.lint(extra, lint_doc, set()))
    retyped = scrape.replace("# TYPE queue_depth gauge", "# TYPE queue_depth counter")
    assert any(
        p == "queue_depth: type counter, the lint file says gauge"
        for p in metrics_lint.lint(retyped, lint_doc, set())
    )
    line = next(x for x in scrape.splitlines() if x.startswith("tasks_started_total{"))
    many = [re.sub(r'replica_id="[^"]*"', f'replica_id="r{n}"', line) for n in range(128)]
    problems = metrics_lint.lint(scrape + "\n".join(many) + "\n", lint_doc, set())
    assert problems == ["label 'replica_id': 129 values exceed its budget 128"]
    line = next(x for x in scrape.splitlines() if x.startswith("tasks_enqueued_total{"))
    cap = lint_doc["metrics"]["tasks_enqueued_total"]["max_series"]
    many = [re.sub(r'pool_id="[^"]*"', f'pool_id="p{n}"', line) for n in range(cap)]
    problems = metrics_lint.lint(scrape + "\n".join(many) + "\n", lint_doc, set())
    assert f"tasks_enqueued_total: {cap + 1} series exceed max_series {cap}" in problems


def test_spec_table_matches_the_lint_file(lint_doc):
    """ORCH-7010: .specs/metrics/contract.md and ci/metrics.lint.json agree."""
    spec = (ROOT / ".specs" / "metrics" / "contract.md").read_text(encoding="utf-8")
    short = {"E": "engine", "V": "engine_version", "P": "pool_id", "R": "replica_id"}
    rows = {}
    for line in spec.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            name, kind, unit, labels, presence = cells
            rows[name.strip("`")] = {
                "type": kind,
                "unit": unit,
                "labels": [short.get(x, x.strip("`")) for x in labels.split()],
                "presence": presence,
            }
    want = {
        name: {k: spec[k] for k in ("type", "unit", "labels", "presence")}
        for name, spec in lint_doc["metrics"].items()
    }
    assert rows == want
    budgets = re.search(r"Label budgets \(distinct values per scrape\): (.*?)\.\s*$", spec, re.S)
    assert budgets is not None
    pairs = re.findall(r"`(\w+)` (\d+)", budgets[1])
    assert {k: int(v) for k, v in pairs} == lint_doc["label_budgets"]


async def test_soft_preemption_series_pass_the_lint(start_orchestrator, metrics_lint, lint_doc):
    """ORCH-7002, ORCH-7011: a displacement by a more urgent task (soft preemption) is
    exported with the lint's label set."""
    cfg = _config(admission={"queue_capacity": 1, "full_policy": "shed-low-priority"})
    orch = await start_orchestrator(cfg)
    await orch.wait_ready("main")
    codes = []
    for priority in ("batch", "batch", "interactive"):  # running, queued, displaces it
        status, _, _ = await orch.submit(prompt="x", max_tokens=30, priority=priority)
        codes.append(status)
    assert codes == [202, 202, 202]
    status, text = await orch.get("/metrics")
    assert 'preemptions_total{engine="mock",mode="soft",pool_id="main"} 1.0' in text
    assert metrics_lint.lint(text, lint_doc, set()) == []  # labels, types, budgets


async def test_security_refusal_series_pass_the_lint(start_orchestrator, metrics_lint, lint_doc):
    """ORCH-8017..8019, ORCH-7011: 401s, a 403 and a stream refused at the tenant's limit
    on a live run, and a stalled reader's cut, are exported with the lint's label sets."""
    from llama_orch.orchestratord.auth import hash_key
    from llama_orch.orchestratord.limits import StreamCounter, TaskStream
    from llama_orch.orchestratord.metrics import Metrics

    key = "llo_lint-tenant-" + "k" * 40
    cfg = _config(
        auth={
            "enabled": True,
            "public_metrics": True,
            "public_health": True,
            "keys": [{"id": "t", "role": "tenant", "tenant": "acme", "hash": hash_key(key)}],
        },
        limits={"max_streams_per_tenant": 1},
    )
    orch = await start_orchestrator(cfg)
    await orch.wait_ready("main")
    sse = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    body = {"prompt": "x", "max_tokens": 200}
    held = await orch.http.post(orch.url + "/v1/tasks", json=body, headers=sse)
    try:
        assert held.status == 200
        async with orch.http.post(orch.url + "/v1/tasks", json=body, headers=sse) as r:
            assert r.status == 429  # ORCH-8013
        status, _, _ = await orch.submit(prompt="x")  # no key: 401
        assert status == 401
        async with orch.http.post(
            orch.url + "/v1/pools/main/drain", headers={"Authorization": f"Bearer {key}"}
        ) as r:
            assert r.status == 403  # a tenant key on the control plane
    finally:
        held.close()
    status, text = await orch.get("/metrics")
    assert status == 200
    assert 'auth_refused_total{api="orchqueue",reason="forbidden",tenant="acme"} 1.0' in text
    assert 'streams_refused_total{tenant="acme"} 1.0' in text
    assert metrics_lint.lint(text, lint_doc, set()) == []
    # a stalled reader's cut (ORCH-8018), rendered as /metrics renders it
    metrics = Metrics(queue_depths=list)

    async def frames():
        yield b"data: 0\n\n"

    async def receive():
        await asyncio.Event().wait()

    async def send(message):
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # the client accepts nothing

    stream = TaskStream(
        frames(), task_id="t", tenant="acme", counter=StreamCounter(metrics.streams_cut),
        stall_timeout_s=0.1,
    )  # fmt: skip
    await asyncio.wait_for(stream({"type": "http"}, receive, send), 5)
    cut = metrics.render().decode()
    metrics.shutdown()
    assert 'streams_cut_total{tenant="acme"} 1.0' in cut
    assert metrics_lint.lint(cut, lint_doc, set()) == []
