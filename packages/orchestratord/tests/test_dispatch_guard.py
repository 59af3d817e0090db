"""The dispatch guard for told finishes (ORCH-2931..2937), in process with the mock
engine: a long prompt is held while it would push a running task past its guard limit,
dispatched once that task ends, its 202 tells the hold; a deadline it could not meet
after the hold lets it go at once; without the guard nothing is held."""

from __future__ import annotations

from llama_orch.core.config import DispatchConfig

LONG = "x " * 2000  # ~1,000 tokens as estimated (4 bytes a token): ~2 s at the prior's 2 ms


async def _submit(run, **body) -> tuple[str, dict]:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    data = await resp.json()
    return data["task_id"], data


def _cfg(mock_config, guard: float | None, margin: float = 0.2):
    cfg = mock_config(
        adapter_options={"token_delay_ms": 30, "slots": 2},
        dispatch=DispatchConfig(guard_told_finish=guard),
    )
    cfg.scheduling.waiting.deadline_margin = margin
    return cfg


async def test_a_long_prompt_waits_for_the_task_it_would_push_past_its_limit(
    start_orchestrator, mock_config
):
    """ORCH-2931, ORCH-2932, ORCH-2933: a free slot, but the head's prefill (~2 s) would
    push the running task (told ~2.5 s, limit 1.5x) past its limit: held, and
    dispatched once that task ended; its 202 told the hold (start after the running
    task's forecast end, not at once)."""
    run = await start_orchestrator(_cfg(mock_config, 1.5))
    a, _ = await _submit(run, max_tokens=100)  # ~3 s at 30 ms a token
    await run.until_tokens(a, 3)
    b, told_b = await _submit(run, prompt=LONG, max_tokens=2)
    rec_a, rec_b = run.orch.get(a), run.orch.get(b)
    assert rec_a.finish_guard is not None and rec_b.finish_guard is not None
    # ORCH-2937: the decision each 202 told is kept for the dispatcher and the forecasts
    assert rec_a.told_hold is False and rec_b.told_hold is True
    assert rec_b.state == "queued"  # a slot is free: only the guard holds it
    assert told_b["predicted_start_ms"] >= 1000, told_b  # the hold is in its forecast
    await run.settled(b)
    assert rec_a.finished_at is not None and rec_b.dispatched is not None
    assert rec_b.dispatched >= rec_a.finished_at  # not before the task it protected ended
    assert rec_b.state == "completed"


async def test_without_the_guard_the_long_prompt_starts_at_once(start_orchestrator, mock_config):
    """ORCH-2935: off by default; the same two tasks run side by side."""
    run = await start_orchestrator(_cfg(mock_config, None))
    a, _ = await _submit(run, max_tokens=100)
    await run.until_tokens(a, 3)
    b, told_b = await _submit(run, prompt=LONG, max_tokens=2)
    rec_a, rec_b = run.orch.get(a), run.orch.get(b)
    assert rec_a.finish_guard is None
    assert rec_a.told_hold is None and rec_b.told_hold is None  # ORCH-2937: no guard
    assert told_b["predicted_start_ms"] < 500, told_b
    await run.settled(b)
    assert rec_b.dispatched is not None and rec_a.finished_at is None
    await run.settled(a)


async def test_a_held_task_goes_at_once_when_the_hold_would_miss_its_deadline(
    start_orchestrator, mock_config
):
    """ORCH-2932: admitted (a margin of 0.5 admits a forecast up to 2x the deadline), but
    its finish after the hold (~3 s + 2 s) would miss its 4 s deadline: not held."""
    run = await start_orchestrator(_cfg(mock_config, 1.5, margin=0.5))
    a, _ = await _submit(run, max_tokens=100)
    await run.until_tokens(a, 3)
    b, _ = await _submit(run, prompt=LONG, max_tokens=2, deadline_ms=4000)
    rec_a, rec_b = run.orch.get(a), run.orch.get(b)
    await run.settled(b)
    assert rec_b.dispatched is not None and rec_a.finished_at is None
    await run.settled(a)
