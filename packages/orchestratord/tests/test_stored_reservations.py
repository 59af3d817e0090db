"""Retry reservations stay per instance and are not made under a state store
(ORCH-2594): the store's atomic admission checks the queue's capacity and knows no
reservation, so a refused client is told the predicted wait and nothing is held."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config


def _config(mock_config: Any, stored: bool) -> Config:
    cfg = mock_config(
        adapter_options={"slots": 1, "token_delay_ms": 20}, admission={"queue_capacity": 1}
    )
    if not stored:
        return cfg  # type: ignore[no-any-return]  # reason: the fixture is untyped
    doc = msgspec.to_builtins(cfg)
    doc["state"] = {"backend": "memory"}
    return msgspec.convert(doc, Config)


@pytest.mark.parametrize("stored", [False, True], ids=["no-store", "store"])
async def test_a_full_queue_reserves_a_turn_only_without_a_store(
    start_orchestrator: Any, mock_config: Any, stored: bool
) -> None:
    run = await start_orchestrator(_config(mock_config, stored))
    first = (await (await run.submit(max_tokens=400)).json())["task_id"]
    await run.until(lambda: run.orch.get(first).state == "running")
    assert (await run.submit(max_tokens=400)).status == 202  # the queue's one place
    resp = await run.http.post(
        run.url + "/v1/tasks",
        json={"prompt": "hello world", "max_tokens": 5},
        headers={"Idempotency-Key": "k-1"},
    )
    body = await resp.json()
    assert resp.status in (429, 503) and body["code"] == "ADMISSION_REJECT", body
    assert int(resp.headers["Retry-After"]) >= 1
    book = run.orch.workload.reservations.get("mock")
    held = [] if book is None else book.outstanding(0.0)
    # ORCH-1978 without a store; ORCH-2594: none with one
    assert len(held) == (0 if stored else 1), held
