"""ORCH-2806: the per-request identifiers have ``uuid.uuid4()``'s bits and text."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.api import derive_seed
from llama_orch.orchestratord import ids


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(min_size=16, max_size=16))
def test_the_ids_are_uuid4s_for_any_random_bytes(raw: bytes) -> None:
    """From the same 16 random bytes, the task ID's text and number, and the
    correlation ID, are those of ``uuid.UUID(bytes=raw, version=4)`` (= ``uuid4()``)."""
    want = uuid.UUID(bytes=raw, version=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ids.os, "urandom", lambda n: raw[:n])
        text, number = ids.new_task_id()
        cid = ids.new_correlation_id()
    assert (text, number) == (str(want), want.int)
    assert cid == want.hex.encode()
    assert uuid.UUID(text).version == 4
    assert derive_seed(number) == want.int % (2**31 - 1)  # ORCH-1003's seed, unchanged


def test_new_ids_differ() -> None:
    assert len({ids.new_task_id()[0] for _ in range(1000)}) == 1000


async def test_a_submission_gets_a_uuid4_task_and_correlation_id(start_orchestrator, mock_config):
    """Through the app: a task without a client ``task_id`` and a request without an
    ``X-Correlation-Id`` get IDs of ``uuid4``'s form; a client's ``task_id`` is kept."""
    run = await start_orchestrator(mock_config())
    resp = await run.submit(prompt="p", max_tokens=2)
    assert resp.status == 202, await resp.text()
    tid = uuid.UUID((await resp.json())["task_id"])
    assert tid.version == 4 and str(tid) == (await resp.json())["task_id"]
    cid = resp.headers["X-Correlation-Id"]
    assert len(cid) == 32 and uuid.UUID(hex=cid).version == 4
    mine = "12345678-1234-4234-9234-123456789abc"
    resp = await run.submit(prompt="p", max_tokens=2, task_id=mine)
    assert resp.status == 202 and (await resp.json())["task_id"] == mine
