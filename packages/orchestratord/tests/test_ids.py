"""ORCH-2806: the per-request identifiers have ``uuid.uuid4()``'s bits and text."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.api import derive_seed
from llama_orch.orchestratord import ids


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(min_size=16, max_size=16), at=st.integers(0, ids.BLOCK_IDS - 1))
def test_the_ids_are_uuid4s_for_any_random_bytes(raw: bytes, at: int) -> None:
    """From the same 16 random bytes, wherever they sit in a block (ORCH-2823), the task
    ID's text and number, and the correlation ID, are those of
    ``uuid.UUID(bytes=raw, version=4)`` (= ``uuid4()``)."""
    want = uuid.UUID(bytes=raw, version=4)
    other = bytes(16)
    block = other * at + raw + other * (ids.BLOCK_IDS - 1 - at)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ids.os, "urandom", lambda n: block[:n])
        ids._reset()
        for _ in range(at):
            ids.new_task_id()
        text, number = ids.new_task_id()
        ids._reset()
        for _ in range(at):
            ids.new_correlation_id()
        cid = ids.new_correlation_id()
        ids._reset()
    assert (text, number) == (str(want), want.int)
    assert cid == want.hex.encode()
    assert uuid.UUID(text).version == 4
    assert derive_seed(number) == want.int % (2**31 - 1)  # ORCH-1003's seed, unchanged


def test_new_ids_differ() -> None:
    assert len({ids.new_task_id()[0] for _ in range(1000)}) == 1000


def test_one_urandom_call_per_block_of_ids() -> None:
    """ORCH-2823: ``os.urandom`` is called once per ``BLOCK_IDS`` IDs (not per ID), each
    block fresh; three blocks of IDs are all different, version 4, RFC 4122 variant."""
    calls: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        calls.append(n)
        return real(n)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ids.os, "urandom", urandom)
        ids._reset()
        made = [ids.new_task_id()[0] for _ in range(ids.BLOCK_IDS * 3)]
        made += [ids.new_correlation_id().decode() for _ in range(ids.BLOCK_IDS)]
    assert calls == [16 * ids.BLOCK_IDS] * 4
    assert len(set(made)) == len(made)
    for text in made:
        u = uuid.UUID(text)
        assert u.version == 4 and u.variant == uuid.RFC_4122


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    """ORCH-2823: a child forked with part of a block left makes its own IDs, not the
    ones its parent makes next from that block."""
    ids.new_task_id()  # a block is in use
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, "".join(ids.new_task_id()[0] for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        child = f.read().decode()
    os.waitpid(pid, 0)
    mine = [ids.new_task_id()[0] for _ in range(8)]
    theirs = [child[i : i + 36] for i in range(0, len(child), 36)]
    assert len(theirs) == 8
    assert not set(mine) & set(theirs)


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
