"""ORCH-2762, ORCH-2771: a queued task's record carries nothing that only readers use before one
exists (issue #20: RSS per queued task), and its end flag behaves as an asyncio.Event."""

from __future__ import annotations

import asyncio

from llama_orch.core.api import QueuedEvent
from llama_orch.orchestratord.tasks import TaskRecord

from .conftest import bare_record as _record


async def test_a_queued_record_is_lean_and_its_end_flag_wakes_waiters() -> None:
    rec = _record()
    assert not hasattr(rec, "__dict__")  # slots: no per-record dict
    assert rec._waiters is None and rec.ended._waiters is None  # nothing until a wait
    assert rec.text_out is None  # ORCH-2771: no resumption text list until one needs it

    # a reader parks on the log; an append wakes it and the list is dropped again
    frames = rec.frames()
    first = asyncio.ensure_future(anext(frames))
    await asyncio.sleep(0)
    assert rec._waiters is not None and len(rec._waiters) == 1
    rec.append(QueuedEvent(queue_position=0, predicted_start_ms=0))
    assert (await asyncio.wait_for(first, 5)).startswith(b"id: 0\n")
    assert rec._waiters is None
    await frames.aclose()

    # the end flag: wait() before and after set(), and a cancelled waiter leaves no trace
    assert not rec.ended.is_set()
    cancelled = asyncio.ensure_future(rec.ended.wait())
    waiting = asyncio.ensure_future(rec.ended.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert rec.ended._waiters is not None and len(rec.ended._waiters) == 1
    rec.ended.set()
    assert await asyncio.wait_for(waiting, 5) is True
    assert rec.ended.is_set() and await rec.ended.wait() is True


def test_a_queued_record_has_no_run_part_until_its_dispatch() -> None:
    """ORCH-2791: the run and preemption state is a part made at dispatch."""
    from llama_orch.orchestratord._task_run import RunFields, RunState

    rec = _record()
    assert rec._run is None
    run_fields = RunState.__slots__
    assert len(run_fields) >= 19
    for name in run_fields:  # none is a slot of the record itself
        assert name not in TaskRecord.__slots__, name
        # routed by RunFields: a data descriptor (reads and writes) on the class
        assert hasattr(type(getattr(RunFields, name)), "__set__"), name
    # reads give the defaults, setting a default makes nothing (placement clears slots)
    assert (rec.preemptions, rec.runner, rec.engine_version, rec.takeover) == (0, None, "", False)
    rec.engine_slot = rec.engine_slot_used = rec.engine_slot_source = None
    rec.preempt_requested = False
    assert rec._run is None
    # the dispatch's first value makes it, and it stays (a requeued task keeps its counts)
    rec.engine_version = "b1"
    assert isinstance(rec._run, RunState) and rec.engine_version == "b1"
    rec.preemptions += 1
    assert rec._run.preemptions == 1 and rec.preemptions == 1
