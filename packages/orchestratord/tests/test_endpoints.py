"""A Ready endpoint replica stays under liveness probes (ORCH-1119).

The chaos runner found that an endpoint engine stopped with SIGSTOP (or behind a
black-holed network path) kept receiving dispatches that all ended
``DECODE_TIMEOUT``: endpoints were probed only until their first Ready. Here one
of two mock endpoints stops answering its health probe: it must leave placement
within ``failures`` probes, work must go to the other one, and it must come back
once its health answers again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from llama_orch.core.adapter_api import Health


async def _until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_an_endpoint_that_stops_answering_leaves_placement_and_returns(
    start_orchestrator, mock_config
) -> None:
    cfg = mock_config(
        endpoints=["mock://0", "mock://1"],
        health_probe_interval_s=0.05,
        health_probe_timeout_s=0.2,
        health_probe_failures=3,
        adapter_options={"token_delay_ms": 1},
    )
    run = await start_orchestrator(cfg)
    pool = run.orch.pools["mock"]
    await _until(lambda: len(pool.ready_replicas()) == 2, 10, "two Ready endpoints")
    sick = pool.replicas["mock-e1"].adapter
    answered = asyncio.Event()
    probes = 0

    async def hung_health() -> Health:
        nonlocal probes
        probes += 1
        await answered.wait()  # a stopped engine: the probe never answers
        return Health(live=True, ready=True)

    real_health = sick.health
    sick.health = hung_health  # type: ignore[method-assign]
    t0 = time.monotonic()
    await _until(lambda: not pool.replicas["mock-e1"].state.ready, 10, "e1 to leave placement")
    left_after = time.monotonic() - t0
    assert probes >= 3  # three unanswered probes, not one
    assert "unanswered" in (pool.replicas["mock-e1"].state.last_error or "")
    assert [r.state.replica_id for r in pool.ready_replicas()] == ["mock-e0"]

    for _ in range(4):
        resp = await run.submit(prompt="hello", max_tokens=4)
        assert resp.status == 202
        tid = (await resp.json())["task_id"]
        events = await run.events(tid)
        assert events[-1][1] == "end", events
        assert run.orch.get(tid).replica_id == "mock-e0"

    sick.health = real_health  # type: ignore[method-assign]
    answered.set()
    await _until(lambda: pool.replicas["mock-e1"].state.ready, 10, "e1 to return")
    print(f"\nendpoint left placement {left_after:.2f}s after its probes stopped answering")
