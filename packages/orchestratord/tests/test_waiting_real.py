"""Issue #19 on real llama-server: no forecast lockout (ORCH-1960, ORCH-1953, ORCH-1958).

Two SmolLM2 replicas with two slots each, as in the report: after a burst of
short tasks and after a burst of canceled tasks, a 48-token task with a 60 s
deadline on the idle pool is admitted and finishes in time. Before the
service-time model, the per-token rate was total service time / tokens, so the
short tasks' first-token time (their ~800-token prefill, under contention) was
charged per token: run against that code (commit aaac1a8) this test fails with
the 200-token task refused, "predicted finish in 115745 ms (start in 0 ms)"
on the idle pool. It takes about 55 s.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.core.sse import SSEParser

pytestmark = pytest.mark.real_engine

# ``--no-repack``: this build's weight-repacking path dies with SIGILL on these CPUs.
SERVER = {"slots": 2, "ctx_per_slot": 1024, "threads": 1, "extra_flags": ("--no-repack",)}
PROMPT = "Write a long story about a dragon who learns to bake bread in a small village."
# About 800 tokens: a short task's service time is mostly its prefill (its first token).
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 80 + "Summarise:"


def _config(servers) -> Config:
    return msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {"enabled": False},  # other features are tested without keys (ORCH-8001)
            "pools": [
                {
                    "id": "smol",
                    "engine": "llamacpp-http",
                    "model": "pypi:smollm2-135m-instruct-q4_1",
                    "endpoints": [s.base_url for s in servers],
                    "ctx": 1024,
                    "slots": 2,
                    "replicas": len(servers),
                    "model_digest": servers[0].model_digest,
                    "engine_version": servers[0].binary.engine_version,
                }
            ],
        },
        Config,
    )


async def _tid(run, **body) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    return (await resp.json())["task_id"]


async def _cancel_after_first_token(run, tid: str) -> None:
    parser = SSEParser()
    async with run.http.get(f"{run.url}/v1/tasks/{tid}/stream") as resp:
        async for chunk in resp.content.iter_any():
            if any(m.event in ("token", "end", "error") for m in parser.feed(chunk)):
                break
    async with run.http.post(f"{run.url}/v1/tasks/{tid}/cancel") as r:
        assert r.status == 204


async def _idle(run) -> None:
    pool = run.orch.pools["smol"]
    for _ in range(600):
        if pool.running() == 0 and not len(pool.queue):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the pool did not become idle")


async def _deadline_task(run, max_tokens: int, deadline_ms: int = 60_000) -> float:
    t0 = time.monotonic()
    resp = await run.submit(prompt=PROMPT, max_tokens=max_tokens, deadline_ms=deadline_ms)
    assert resp.status == 202, (max_tokens, await resp.text())
    events = await run.events((await resp.json())["task_id"])
    took = time.monotonic() - t0
    assert events[-1][1] == "end", events[-1]
    assert took * 1000 <= deadline_ms, took
    return took


@pytest.mark.alone  # each task ends within its deadline as forecast on real engines (ORCH-6258)
async def test_no_lockout_after_short_and_canceled_bursts(
    start_orchestrator, start_llama_server, smollm2_model
):
    servers = [start_llama_server(smollm2_model, **SERVER) for _ in range(2)]
    run = await start_orchestrator(_config(servers))
    pool = run.orch.pools["smol"]
    assert len(pool.ready_replicas()) == 2
    assert await _deadline_task(run, 48) < 60  # admitted on a fresh pool

    # 12 short tasks at once, run to their end
    short = await asyncio.gather(*(_tid(run, prompt=LONG_PROMPT, max_tokens=4) for _ in range(12)))
    for tid in short:
        assert (await run.events(tid))[-1][1] == "end"
    await _idle(run)
    took_short = await _deadline_task(run, 48)
    await _idle(run)
    await _deadline_task(run, 200)

    # a burst of canceled tasks
    await _idle(run)
    long = await asyncio.gather(*(_tid(run, prompt=LONG_PROMPT, max_tokens=200) for _ in range(8)))
    await asyncio.gather(*(_cancel_after_first_token(run, t) for t in long))
    await _idle(run)
    took_cancel = await _deadline_task(run, 48)
    params = [
        run.orch.workload.model(pool, rid, 2).params(time.monotonic()) for rid in pool.replicas
    ]
    print(f"48 tokens after short burst {took_short:.2f} s, after cancels {took_cancel:.2f} s")
    print(f"models: {params}")
