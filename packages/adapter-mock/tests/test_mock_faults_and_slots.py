"""Mock adapter: fault modes, slot limits, cancellation (ORCH-3006, ORCH-3007)."""

from __future__ import annotations

import asyncio

import pytest
from llama_orch.adapters.mock import MockAdapter
from llama_orch.core.adapter_api import AdapterTarget, Finished, GenerateRequest, TokenChunk
from llama_orch.core.errors import PoolUnready, ReplicaExhausted, WorkerReset


def make(**options: object) -> MockAdapter:
    return MockAdapter(AdapterTarget(replica_id="r0", options=options))


def req(task_id: str = "t1", max_tokens: int = 1000) -> GenerateRequest:
    return GenerateRequest(task_id=task_id, prompt="p", max_tokens=max_tokens, seed=1)


async def test_unready_fault() -> None:
    """ORCH-3003/3007: health says not ready and generate raises PoolUnready."""
    a = make(fail="unready")
    h = await a.health()
    assert h.live and not h.ready and "unready" in h.detail
    with pytest.raises(PoolUnready):
        await anext(a.generate(req()))
    assert a.busy_slots == 0


async def test_error_at_start_raises_before_any_token() -> None:
    a = make(fail="error_at_start")
    with pytest.raises(WorkerReset):
        await anext(a.generate(req()))
    assert a.busy_slots == 0 and a.generated_tokens_total == 0


async def test_hang_after_n_tokens_until_cancelled() -> None:
    """hang_after:N stops producing; cancelling the consumer frees the slot."""
    a = make(fail="hang_after:2")
    got_two = asyncio.Event()
    seen: list[TokenChunk] = []

    async def consume() -> None:
        async for ev in a.generate(req()):
            assert isinstance(ev, TokenChunk)
            seen.append(ev)
            if len(seen) == 2:
                got_two.set()

    task = asyncio.create_task(consume())
    await got_two.wait()
    assert a.busy_slots == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(seen) == 2 and a.generated_tokens_total == 2
    assert a.busy_slots == 0 and a.live_producers == 0


async def test_slot_limit_raises_replica_exhausted() -> None:
    """At most ``slots`` concurrent generations; a freed slot is reusable."""
    a = make(slots=2, token_delay_ms=1)
    it1, it2, it3 = a.generate(req("a")), a.generate(req("b")), a.generate(req("c"))
    assert isinstance(await anext(it1), TokenChunk)
    assert isinstance(await anext(it2), TokenChunk)
    assert a.busy_slots == 2
    with pytest.raises(ReplicaExhausted):
        await anext(it3)
    await it1.aclose()
    assert a.busy_slots == 1
    it4 = a.generate(req("d"))
    assert isinstance(await anext(it4), TokenChunk)
    await it2.aclose()
    await it4.aclose()
    assert a.busy_slots == 0


async def test_aclose_frees_slot_and_stops_tokens() -> None:
    """ORCH-3006: aclose frees the slot immediately; no token is produced afterwards."""
    a = make(token_delay_ms=1)
    it = a.generate(req(max_tokens=100_000))
    for _ in range(3):
        assert isinstance(await anext(it), TokenChunk)
    assert a.busy_slots == 1 and a.live_producers == 1
    await it.aclose()
    assert a.busy_slots == 0 and a.live_producers == 0
    produced = a.generated_tokens_total
    # Give the event loop many turns: a leaked producer would keep counting.
    for _ in range(50):
        await asyncio.sleep(0)
    assert a.generated_tokens_total == produced
    assert produced < 100_000
    assert a.generations_aborted == 1 and a.generations_finished == 0


async def test_task_cancellation_frees_slot() -> None:
    """ORCH-3006: cancelling the consuming task is the same as closing the iterator."""
    a = make(token_delay_ms=1)
    three = asyncio.Event()

    async def consume() -> None:
        n = 0
        async for _ in a.generate(req(max_tokens=100_000)):
            n += 1
            if n == 3:
                three.set()

    task = asyncio.create_task(consume())
    await three.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a.busy_slots == 0 and a.live_producers == 0
    produced = a.generated_tokens_total
    for _ in range(50):
        await asyncio.sleep(0)
    assert a.generated_tokens_total == produced


async def test_finished_frees_slot_even_if_consumer_stops_reading() -> None:
    a = make(slots=1)
    it = a.generate(req(max_tokens=2))
    events = [await anext(it) for _ in range(3)]
    assert isinstance(events[-1], Finished)
    assert a.busy_slots == 0  # without closing the iterator
    assert a.generations_finished == 1
    await it.aclose()


async def test_aclose_adapter_stops_everything() -> None:
    """Closing the adapter frees every slot; a reader blocked on a stream gets WorkerReset."""
    a = make(slots=2, fail="hang_after:1")
    it1, it2 = a.generate(req("a")), a.generate(req("b"))
    await anext(it1)
    await anext(it2)
    blocked = asyncio.create_task(anext(it1))
    await a.aclose()
    assert a.busy_slots == 0 and a.live_producers == 0
    with pytest.raises(WorkerReset, match="closed"):
        await asyncio.wait_for(blocked, 2.0)
    await it2.aclose()
