"""A queue that keeps the starts it told (ORCH-2972..2974), in process with the mock
engine on one slot: a deadline task with slack waits behind the queued task without a
deadline it would pass, and its 202 tells that; one without slack passes; off, both pass."""

from __future__ import annotations

import time

from llama_orch.core.config import DispatchConfig


async def _submit(run, **body) -> tuple[str, dict]:
    sent = time.monotonic()
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    data = await resp.json()
    data["sent"], data["received"] = sent, time.monotonic()
    return data["task_id"], data


def _cfg(mock_config, keep: float | None):
    cfg = mock_config(
        adapter_options={"token_delay_ms": 30, "slots": 1},
        dispatch=DispatchConfig(keep_told_start=keep),
    )
    cfg.scheduling.waiting.deadline_margin = 0.5  # admits a forecast up to 2x the deadline
    return cfg


async def _scenario(run) -> tuple[dict[str, dict], dict[str, float]]:
    """A runs (~3 s); B (no deadline) queues behind it; C (a deadline 30 s away) and D
    (4 s away: it cannot wait for B) arrive after B."""
    a, _ = await _submit(run, max_tokens=100)  # ~3 s at 30 ms a token
    await run.until_tokens(a, 3)
    told: dict[str, dict] = {}
    ids: dict[str, str] = {"a": a}
    ids["b"], told["b"] = await _submit(run, max_tokens=5)
    ids["c"], told["c"] = await _submit(run, max_tokens=5, deadline_ms=30_000)
    ids["d"], told["d"] = await _submit(run, max_tokens=5, deadline_ms=4_000)
    for task in ids.values():
        await run.settled(task)
    dispatched = {}
    for name, task in ids.items():
        at = run.orch.get(task).dispatched
        assert at is not None, name
        dispatched[name] = at
    return told, dispatched


async def test_a_deadline_task_with_slack_waits_for_the_start_told_before_it(
    start_orchestrator, mock_config
):
    """ORCH-2972: D (start-by ~3.7 s after admission) passes B (start-by ~1.5 x its ~2.9 s
    told start); C (start-by ~30 s) does not, and its 202 tells its start behind B."""
    run = await start_orchestrator(_cfg(mock_config, 1.5))
    told, at = await _scenario(run)
    assert at["a"] < at["d"] < at["b"] < at["c"], at
    assert told["c"]["queue_position"] == 1, told["c"]  # behind B (ORCH-1107); D came later
    # B's service (~160 ms: 5 tokens at 30 ms) before C's start, as instants: C's told
    # start at its earliest against B's at its latest
    b_at = told["b"]["received"] + told["b"]["predicted_start_ms"] / 1000
    c_at = told["c"]["sent"] + told["c"]["predicted_start_ms"] / 1000
    assert c_at - b_at >= 0.1, told


async def test_off_both_deadline_tasks_pass(start_orchestrator, mock_config):
    """ORCH-2972, ORCH-1111: without the option, EDF: D, C, then B."""
    run = await start_orchestrator(_cfg(mock_config, None))
    told, at = await _scenario(run)
    assert at["a"] < at["d"] < at["c"] < at["b"], at
    assert told["c"]["queue_position"] == 0, told["c"]  # ahead of B
    assert told["c"]["predicted_start_ms"] <= told["b"]["predicted_start_ms"], told
