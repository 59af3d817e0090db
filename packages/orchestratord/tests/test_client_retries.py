"""The typed client redeems the place the server keeps for it (ORCH-5010 with
ORCH-1978..1981): refused by a full queue, it comes back after the delay it was told,
with the same Idempotency-Key, and is admitted although the queue is still full."""

from __future__ import annotations

from typing import Any

from llama_orch.cli import OrchClient


async def test_the_typed_client_is_admitted_at_its_first_retry(
    start_orchestrator: Any, mock_config: Any
) -> None:
    cfg = mock_config(
        admission={"queue_capacity": 1},
        adapter_options={"token_delay_ms": 5, "fail": "hang_after:3"},
    )
    run = await start_orchestrator(cfg)
    pool = run.orch.pools["mock"]
    held = []
    for tokens in (50, 20):  # one hangs on the only slot, one fills the queue
        resp = await run.submit(max_tokens=tokens)
        assert resp.status == 202
        held.append((await resp.json())["task_id"])
    assert len(pool.queue) == 1
    async with OrchClient(run.url) as orch:
        accepted = await orch.submit(prompt="let me in", max_tokens=5)
        assert len(orch.retry_waits) == 1 and orch.retry_waits[0] > 0  # one wait, as told
    assert len(pool.queue) == 2  # past capacity, by the redeemed place only
    for tid in (*held, accepted.task_id):
        run.orch.cancel(tid)
