"""prefix-aware placement by engine slots through orchestratord with mock engines that
declare ``engine_slots`` (ORCH-2350..2373), and without them the replica-level rule.

The pinning reaching a real llama-server (``id_slot``) is proven in
``adapter-llamacpp-http/tests/test_llamacpp_real_engine.py``; the policy's rules
in ``core/tests/test_slot_placement.py``.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from llama_orch.orchestratord.migration import streamed_text

SYSTEM = "You are a careful assistant who answers briefly. " * 20


async def _submit(run: Any, **body: Any) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["task_id"])


async def _until(cond: Any, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.02)


async def test_prefix_aware_pins_the_warm_idle_slot_and_frees_it(mock_config, start_orchestrator):
    """ORCH-2371, ORCH-2350, ORCH-2352, ORCH-2354, ORCH-2356, ORCH-2357: on engines that
    declare ``engine_slots``, a next prompt sharing the
    system prompt goes to the slot that completed it; while that slot is busy with a
    long task, a third goes to the least-loaded replica (waiting for the busy slot
    costs more than its prefill there); runs with a hit are pinned (``engine_slot``),
    runs without are not, and the slot table frees each slot when its task ends."""
    run = await start_orchestrator(
        mock_config(
            endpoints=["mock://0", "mock://1"],
            # a mock engine keeps no host prompt cache (ORCH-2352)
            placement={"policy": "prefix-aware", "block_chars": 64, "host_cache": False},
            adapter_options={"token_delay_ms": 10, "slots": 2, "engine_slots": True},
        )
    )
    pool = run.orch.pools["mock"]
    await _until(lambda: len(pool.ready_replicas()) == 2)
    table = run.orch.placer.slot_table(pool)
    # an unrelated task on the first replica sends the system prompt to the second
    other = await _submit(run, prompt="unrelated " * 40, max_tokens=400)
    await run.until(lambda: run.orch.get(other).state == "running")
    first = await _submit(run, prompt=SYSTEM + "user: first", max_tokens=3)
    await run.events(first)
    a = run.orch.get(first)
    assert a.replica_id != run.orch.get(other).replica_id
    assert a.engine_slot is None  # ORCH-2354: no hit, the engine chooses its slot
    run.orch.cancel(other)
    await run.events(other)
    await _until(lambda: table.where(other) is None)
    # both replicas idle now: least-loaded would take the lowest id, the slot rules the hit
    second = await _submit(run, prompt=SYSTEM + "user: second", max_tokens=3)
    await run.events(second)
    b = run.orch.get(second)
    assert b.replica_id == a.replica_id and b.engine_slot is not None  # ORCH-2352
    # ORCH-2357: the policy host would see the best idle slot's hit per replica
    follow = SimpleNamespace(task_id="next", request=SimpleNamespace(prompt=SYSTEM + "user: x"))
    shown = run.orch.placer.expected_hits(pool, follow)  # type: ignore[arg-type]
    assert shown[b.replica_id] >= len(SYSTEM) // 4 - 16
    assert [v for k, v in shown.items() if k != b.replica_id] == [0]
    long = await _submit(run, prompt=SYSTEM + "user: long", max_tokens=400)
    await run.until(lambda: run.orch.get(long).state == "running")
    c = run.orch.get(long)
    assert (c.replica_id, c.engine_slot) == (b.replica_id, b.engine_slot)
    third = await _submit(run, prompt=SYSTEM + "user: third", max_tokens=3)
    await run.events(third)
    d = run.orch.get(third)
    # ORCH-2354, ORCH-2373: waiting ~400 decode steps for the busy slot's copy
    # (ORCH-2372) costs more than prefilling the short prompt on the idle replica
    assert d.replica_id != a.replica_id and d.engine_slot is None
    assert table.where(long) == (c.replica_id, c.engine_slot)
    run.orch.cancel(long)
    await run.events(long)
    await _until(lambda: table.where(long) is None)
    assert not any(s.busy for rid in pool.replicas for s in table.slots(rid, 2))
    text = await run.metrics_text()
    for decision in ("slot", "load"):
        series = (
            f'placement_decisions_total{{decision="{decision}",engine="mock",'
            f'placement="prefix-aware",pool_id="mock"}}'
        )
        assert series in text, (decision, text)


async def test_a_new_session_is_pinned_to_an_empty_slot_not_to_an_idle_sessions(
    mock_config, start_orchestrator
):
    """ORCH-2364, ORCH-2369: a second session sharing the system prompt is pinned to
    the empty slot, not to the first session's idle slot (whose cache is copied
    into it first), and the first session's next turn then finds its history there."""
    run = await start_orchestrator(
        mock_config(
            endpoints=["mock://0"],
            placement={"policy": "prefix-aware", "block_chars": 64, "host_cache": False},
            adapter_options={"token_delay_ms": 1, "slots": 2, "engine_slots": True},
        )
    )
    pool = run.orch.pools["mock"]
    await _until(lambda: len(pool.ready_replicas()) == 1)
    s1, s2 = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2))
    owls = SYSTEM + "user: tell me about owls. " * 4
    first = await _submit(run, prompt=owls, max_tokens=3, session_id=s1)
    await run.events(first)
    a = run.orch.get(first)
    table = run.orch.placer.slot_table(pool)
    await _until(lambda: table.where(first) is None)
    slot_a = next(i for i, s in enumerate(table.slots(a.replica_id, 2)) if s.held)
    other = await _submit(run, prompt=SYSTEM + "user: tea?", max_tokens=3, session_id=s2)
    await run.events(other)
    b = run.orch.get(other)
    assert b.engine_slot is not None and b.engine_slot != slot_a  # pinned, the empty slot
    assert b.engine_slot_source == slot_a  # ORCH-2369: the system prompt copied from there
    assert (
        table.slots(a.replica_id, 2)[b.engine_slot].owner
        != table.slots(a.replica_id, 2)[slot_a].owner
    )
    turn2 = a.request.prompt + "".join(streamed_text(a)) + " user: why?"
    again = await _submit(run, prompt=turn2, max_tokens=3, session_id=s1)
    await run.events(again)
    assert run.orch.get(again).engine_slot == slot_a  # its own history, pinned


async def test_a_busy_slot_is_the_copy_source_when_no_idle_slot_holds_the_prefix(
    mock_config, start_orchestrator
):
    """ORCH-2372: while the only slot holding the system prompt runs a long task, a new
    session is pinned to the empty slot with that busy slot as the copy source (the
    engine saves it once its task ends), not left to a cold prefill."""
    run = await start_orchestrator(
        mock_config(
            endpoints=["mock://0"],
            placement={"policy": "prefix-aware", "block_chars": 64, "host_cache": False},
            adapter_options={"token_delay_ms": 10, "slots": 2, "engine_slots": True},
        )
    )
    pool = run.orch.pools["mock"]
    await _until(lambda: len(pool.ready_replicas()) == 1)
    s1, s2, s3 = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
    first = await _submit(run, prompt=SYSTEM + "user: owls?", max_tokens=3, session_id=s1)
    await run.events(first)
    table = run.orch.placer.slot_table(pool)
    await _until(lambda: table.where(first) is None)
    rid = run.orch.get(first).replica_id
    slot_a = next(i for i, s in enumerate(table.slots(rid, 2)) if s.held)
    long = await _submit(run, prompt=SYSTEM + "user: owls, more?", max_tokens=400, session_id=s1)
    await run.until(lambda: run.orch.get(long).state == "running")
    assert run.orch.get(long).engine_slot == slot_a  # its own slot, now busy
    other = await _submit(run, prompt=SYSTEM + "user: tea?", max_tokens=3, session_id=s2)
    await run.events(other)
    b = run.orch.get(other)
    assert b.engine_slot == 1 - slot_a and b.engine_slot_source == slot_a  # ORCH-2372
    run.orch.cancel(long)
    await run.events(long)
    # the engine's own choice when nothing holds a hit: not pinned (ORCH-2354)
    cold = await _submit(run, prompt="unrelated " * 40, max_tokens=3, session_id=s3)
    await run.events(cold)
    assert run.orch.get(cold).engine_slot is None


async def test_prefix_aware_keeps_the_replica_rule_without_engine_slots(
    mock_config, start_orchestrator
):
    """ORCH-2371: an engine that does not declare ``engine_slots`` (vLLM), or
    ``placement.engine_slots: false``, gets the replica-level rule of ORCH-2312: the
    warm replica, no slot pinned, decision ``prefix``, no slot table."""
    for options, placement in (
        ({"slots": 2}, {}),
        ({"slots": 2, "engine_slots": True}, {"engine_slots": False}),
    ):
        run = await start_orchestrator(
            mock_config(
                endpoints=["mock://0", "mock://1"],
                placement={"policy": "prefix-aware", "block_chars": 64} | placement,
                adapter_options={"token_delay_ms": 1} | options,
            )
        )
        pool = run.orch.pools["mock"]
        await _until(lambda: len(pool.ready_replicas()) == 2)  # noqa: B023
        first = await _submit(run, prompt=SYSTEM + "user: first", max_tokens=3)
        await run.events(first)
        second = await _submit(run, prompt=SYSTEM + "user: second", max_tokens=3)
        await run.events(second)
        a, b = run.orch.get(first), run.orch.get(second)
        assert b.replica_id == a.replica_id and b.engine_slot is None is a.engine_slot
        assert not run.orch.placer.slot_rules(pool)
        text = await run.metrics_text()
        assert 'decision="prefix",engine="mock",placement="prefix-aware"' in text
        assert 'decision="slot"' not in text
