"""A session turn refused by a full queue uses no turn (found by the chaos harness, #21).

ORCH-1402: a session admits at most ``max_turns`` turns; a submission answered
429 was not admitted, so it must not count. Before the fix, a client retrying a
429 as ``Retry-After`` asks exhausted its session after ``max_turns`` refusals.
"""

from __future__ import annotations

import uuid

from llama_orch.core.config import Config


async def test_a_429_session_turn_is_not_counted_nor_reserved(start_orchestrator, mock_config):
    cfg: Config = mock_config(
        admission={"queue_capacity": 1}, adapter_options={"token_delay_ms": 50}
    )
    cfg.sessions.max_turns = 2
    run = await start_orchestrator(cfg)
    sid = str(uuid.uuid4())
    first = await run.submit(max_tokens=40, session_id=sid)  # runs (one slot)
    assert first.status == 202
    filler = await run.submit(max_tokens=40)  # fills the queue of one
    assert filler.status == 202
    for _ in range(3):  # more refusals than max_turns
        resp = await run.submit(max_tokens=40, session_id=sid)
        assert resp.status == 429, await resp.text()
    async with run.http.get(f"{run.url}/v1/sessions/{sid}") as r:
        info = await r.json()
    assert info["turns"] == 1, info
    (session,) = [s for s in run.orch.sessions._sessions.values() if s.key[1] == sid]
    for resp in (first, filler):
        await run.events((await resp.json())["task_id"])
    second = await run.submit(max_tokens=4, session_id=sid)  # the 2nd turn is still free
    assert second.status == 202, await second.text()
    await run.events((await second.json())["task_id"])
    assert session.reserved_tokens == 0  # every admitted turn settled, nothing leaked
