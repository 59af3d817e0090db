"""The relay path (issue #20): stream limits of a single tenant, one request per task."""

from __future__ import annotations

import asyncio

from llama_orch.core.config import LimitsConfig


async def test_single_tenant_holds_64_streams_with_default_limits(start_orchestrator, mock_config):
    """ORCH-2701: auth off (one tenant), default limits: 64 open streams while the queue
    has room get no 429."""
    assert LimitsConfig().max_streams_per_tenant == 1024
    cfg = mock_config(
        admission={"queue_capacity": 128},
        adapter_options={"token_delay_ms": 20, "slots": 8},
    )
    run = await start_orchestrator(cfg)
    ids = []
    for _ in range(64):
        resp = await run.submit(max_tokens=400)
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["task_id"])
    opened = await asyncio.gather(*(run.http.get(f"{run.url}/v1/tasks/{t}/stream") for t in ids))
    try:
        assert [r.status for r in opened] == [200] * 64
    finally:
        for r in opened:
            r.close()
        for t in ids:
            async with run.http.post(f"{run.url}/v1/tasks/{t}/cancel") as r:
                assert r.status == 204
