"""The metrics lint on a real run: orchestratord with a real llama-server (ORCH-7011).

The embedded pool manager starts llama-server with SmolLM2; the run covers a
completed task with a deadline, a full-queue 429, a task canceled while
queued and an invalid request, then ``/metrics`` must pass the lint with no
missing, unlisted or mislabelled series and no budget exceeded.
"""

from __future__ import annotations

import asyncio
import re
import uuid

import msgspec
import pytest
from llama_orch.core.config import Config

pytestmark = pytest.mark.real_engine


async def test_real_run_passes_the_metrics_lint(
    start_orchestrator, llama_server_binary, smollm2_model, metrics_lint, lint_doc
):
    config = msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {"enabled": False},  # ORCH-8001: explicit, tests only
            "allow_cpu_inference": True,
            "admission": {"queue_capacity": 1, "full_policy": "reject"},
            "observability": {"engine_scrape_interval_s": 0.2},
            "pools": [
                {
                    "id": "smol",
                    "engine": "llamacpp-http",
                    "model": "pypi:smollm2-135m-instruct-q4_1",
                    "ctx": 1024,
                    "slots": 1,
                    "threads": 2,
                }
            ],
        },
        Config,
    )
    orch = await start_orchestrator(config)
    await orch.wait_ready("smol")
    status, caps = await orch.get("/v1/capabilities")
    [report] = caps["self_tests"]  # ORCH-7050, ORCH-7052: checked on the real engine
    assert report["passed"], report
    assert [c["name"] for c in report["checks"]] == ["preload", "decode", "cancel", "telemetry"]
    common = {"prompt": "Count from one to fifty:", "seed": 7, "temperature": 0.0}
    status, a, _ = await orch.submit(
        **common, max_tokens=64, deadline_ms=120_000, priority="interactive"
    )
    assert status == 202, a
    # A holds the slot before B is submitted; under load A may wait briefly first, and a
    # task that waits has `queued` events before `started` (ORCH-1117, ORCH-1961).
    first = await orch.events(a["task_id"], until="started")
    assert [e[1] for e in first] == ["queued"] * (len(first) - 1) + ["started"], first
    b_id = str(uuid.uuid4())
    status, b, _ = await orch.submit(**common, task_id=b_id, max_tokens=16, priority="batch")
    assert status == 202, b  # queued behind A (one slot)
    status, c, _ = await orch.submit(**common, max_tokens=16, priority="batch")
    assert status == 429, c  # the queue (capacity 1) is full
    async with orch.http.post(f"{orch.url}/v1/tasks/{b_id}/cancel") as resp:
        assert resp.status == 204
    events = await orch.events(a["task_id"])
    assert events[-1][1] == "end" and events[-1][2]["tokens_out"] > 0
    status, bad, _ = await orch.submit(**common, max_tokens=10**9)
    assert status == 400, bad
    await asyncio.sleep(0.6)  # a few engine scrapes (every 0.2 s)
    status, text = await orch.get("/metrics")
    assert status == 200

    problems = metrics_lint.lint(text, lint_doc, {"always", "after_task"})
    assert problems == [], "\n".join(problems)
    types, samples = metrics_lint.parse(text)
    for name in (
        "tasks_canceled_total",
        "tasks_rejected_total",
        "admission_backpressure_events_total",
        "deadlines_met_ratio",
    ):
        assert name in types, name  # on_event metrics this run triggered
    assert "gpu_utilization" not in types and "vram_used_bytes" not in types  # no GPU here
    version = llama_server_binary.engine_version
    for family, _, labels in samples:
        if "engine_version" in lint_doc["metrics"][family]["labels"]:
            assert labels["engine_version"] == version, (family, labels)
            assert labels["engine"] == "llamacpp-http"
    kv = re.search(r"^kv_cache_usage_ratio\{[^}]*\} (\S+)$", text, re.M)
    assert kv is not None and 0.0 <= float(kv[1]) <= 1.0
    ready = re.search(r'^model_state\{[^}]*state="ready"[^}]*\} (\S+)$', text, re.M)
    assert ready is not None and float(ready[1]) == 1.0
    assert 'cpu_inference="true"' in ready[0]
    tokens_out = re.search(r"^tokens_out_total\{[^}]*\} (\S+)$", text, re.M)
    assert tokens_out is not None and float(tokens_out[1]) == events[-1][2]["tokens_out"]
