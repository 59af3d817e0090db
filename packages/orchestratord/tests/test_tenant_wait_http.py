"""OrchQueue v1's 429 for a tenant at its ``max_concurrent`` tells when the tenant's own
task ends (ORCH-1125, ORCH-1126), and with a state store the pool's delay (ORCH-1128).
Mock engine, 20 ms a token: the told value is compared with the daemon's own forecast of
the running task's finish, read right after the refusal."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config, TenantConfig


def _config(mock_config: Any, stored: bool) -> Config:
    cfg = mock_config(adapter_options={"slots": 2, "token_delay_ms": 20})
    cfg.scheduling.default_tenant = TenantConfig(max_concurrent=1)
    if not stored:
        return cfg  # type: ignore[no-any-return]  # reason: the fixture is untyped
    doc = msgspec.to_builtins(cfg)
    doc["state"] = {"backend": "memory"}
    return msgspec.convert(doc, Config)


def _finish_ms(run: Any, task_id: str) -> float:
    """The running task's finish (ms from now) as its client is told it (ORCH-2907)."""
    pool = run.orch.pools["mock"]
    running = run.orch.workload.forecasts(pool, time.monotonic(), lambda *a: None)
    assert running is not None
    (ms,) = [ms for t, ms in running if t.task_id == task_id]
    return float(ms)


@pytest.mark.parametrize("stored", [False, True], ids=["no-store", "store"])
async def test_a_tenant_at_its_cap_is_told_when_its_running_task_ends(
    start_orchestrator: Any, mock_config: Any, stored: bool
) -> None:
    run = await start_orchestrator(_config(mock_config, stored))
    first = (await (await run.submit(max_tokens=300)).json())["task_id"]
    await run.until_tokens(first, 5)
    t0 = time.monotonic()
    resp = await run.submit(max_tokens=5)
    t1 = time.monotonic()
    body = await resp.json()
    assert resp.status == 429 and body["policy_label"] == "quota", body
    assert "max_concurrent" in body["message"]
    told = int(resp.headers["X-Backoff-Ms"])
    assert body["retry_after_ms"] == told
    assert int(resp.headers["Retry-After"]) == max(1, -(-told // 1000))
    pool = run.orch.pools["mock"]
    pool_rule = run.orch.workload.retry_after_ms(pool)  # one slot of two is idle
    finish = _finish_ms(run, first)
    assert finish > 3000  # ~290 tokens at 20 ms
    if stored:  # ORCH-1128: the store's refusal keeps the pool's delay
        assert told == pool_rule == 100
        return
    # ORCH-1125: its own task's told finish, not the idle slot's 100 ms; read up to
    # (t1 - t0) later here, and every token re-reads the mock's pace: 150 ms plus 10 %
    # either way (the facades' test says what a loaded machine moved it by)
    assert pool_rule == 100
    slack = (time.monotonic() - t0) * 1000
    drift = 150 + 0.10 * finish
    assert finish - drift <= told <= finish + slack + drift, (told, finish, slack, t1 - t0)
