"""ORCH-2762, ORCH-2771, ORCH-2743: a queued task's record carries nothing that only
readers use before one exists, nor what can be shared (issue #20: RSS per queued task),
and its end flag behaves as an asyncio.Event."""

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


async def test_a_record_holds_no_end_flag_bound_method_or_sent_pair_of_its_own() -> None:
    """ORCH-2743: the store's ``on_change`` is one bound method for every record, the
    last ``queued`` event's position is ``queue_position`` (no tuple), and a record makes
    its end flag only when someone asks for it before the end."""
    from llama_orch.core.api import EndEvent
    from llama_orch.core.config import WaitingConfig
    from llama_orch.orchestratord.tasks import TaskStore
    from llama_orch.orchestratord.waiting import announce_queued

    store = TaskStore(retention_s=60.0, max_tasks=10)
    a, b = _record(), _record()
    b.task_id = "t-2"
    store.add(a)
    store.add(b)
    assert a.on_change is not None and a.on_change is b.on_change

    cfg = WaitingConfig(queued_event_interval_s=1.0)
    assert announce_queued(a, cfg, 3, 10_000, now=100.0)  # the first one is always sent
    assert (a.queue_position, a.queued_sent_eta, a.event_count) == (3, 10_000, 1)
    assert not [n for n in TaskRecord.__slots__ if type(getattr(a, n)) is tuple]
    assert not announce_queued(a, cfg, 2, 10_000, now=100.5)  # within the interval
    assert not announce_queued(a, cfg, 3, 10_900, now=101.0)  # same place, ETA within 10 %
    assert announce_queued(a, cfg, 2, 10_900, now=101.0)  # moved up
    assert announce_queued(a, cfg, 2, 12_100, now=102.0)  # the ETA moved by more than 10 %
    assert (a.queue_position, a.queued_sent_eta, a.event_count) == (2, 12_100, 3)

    end = EndEvent(tokens_out=0, decode_ms=0, reason="canceled")
    c = _record()  # not in the store
    assert a._ended is None and a.finish(end) and c.finish(end)
    assert a._ended is c._ended is not None  # one shared flag, set: none made per record
    assert a.ended.is_set() and await a.ended.wait() is True
    assert b._ended is None
    waiting = asyncio.ensure_future(b.ended.wait())  # asked for before the end: its own
    await asyncio.sleep(0)
    assert b._ended is not None and not b._ended.is_set() and not waiting.done()
    assert b.finish(end) and await asyncio.wait_for(waiting, 5) is True
    assert a._ended is not b._ended and b.ended.is_set()
