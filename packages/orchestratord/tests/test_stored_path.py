"""The store path's round trips per task (ORCH-2569..2571, issue #13): admission
dispatches in the same call, a slot freed here wakes no dispatch, and the streams of
a task running here are served from what this instance stored, with the store's ids,
falling back to the store's log when the instance stops owning the task."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from llama_orch.core.config import Config
from llama_orch.core.sse import SSEParser, encode_event
from llama_orch.core.state_store import Event, LoggedEvent
from llama_orch.orchestratord.stored_local import StoredLog

_SSE = {"Accept": "text/event-stream"}
Event3 = tuple[int, str, bytes]  # an SSE event as read: id, event, data


def _with_state(config: Config, **state: Any) -> Config:
    doc = msgspec.to_builtins(config)
    doc["state"] = {"backend": "memory", **state}
    return msgspec.convert(doc, Config)


def _count_calls(store: Any, calls: Counter[str], *names: str) -> None:
    """Count the calls of the store's methods ``names`` (``tail`` is a generator)."""
    for name in names:
        orig = getattr(store, name)
        if name == "tail":

            def tail(*a: Any, _orig: Any = orig, **k: Any) -> Any:
                calls["tail"] += 1
                return _orig(*a, **k)

            store.tail = tail
            continue

        async def call(*a: Any, _orig: Any = orig, _name: str = name, **k: Any) -> Any:
            calls[_name] += 1
            return await _orig(*a, **k)

        setattr(store, name, call)


async def _stream(
    run: Any, on_event: Callable[[list[Event3]], Awaitable[None]] | None = None, **body: Any
) -> tuple[str, list[Event3]]:
    """``POST /v1/tasks`` with the stream in the answer (ORCH-2710): its task id and
    events as (id, event, data); ``on_event(events so far)`` after each chunk."""
    out: list[Event3] = []
    parser = SSEParser()
    body.setdefault("prompt", "hello world")
    async with run.http.post(run.url + "/v1/tasks", json=body, headers=_SSE) as resp:
        assert resp.status == 200, await resp.text()
        tid = resp.headers["X-Task-Id"]
        async for chunk in resp.content.iter_any():
            for msg in parser.feed(chunk):
                assert msg.id is not None
                out.append((int(msg.id), msg.event, msg.data.encode()))
            if on_event is not None:
                await on_event(out)
    return tid, out


def _as_logged(events: list[LoggedEvent]) -> list[Event3]:
    return [(ev.seq, ev.kind, ev.data) for ev in events]


async def test_a_task_running_here_streams_from_what_it_stored(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-2569: each admission is one ``submit_dispatch`` and the pool's dispatcher
    is not woken to dispatch per task (ORCH-2570: a slot freed here with nothing queued
    wakes no dispatch; ORCH-2596: its wait is not woken either). ORCH-2571: a task
    running here streams from the events this instance stored, without reading the
    store's log, with the same ids and data as the store's log."""
    cfg = _with_state(mock_config(adapter_options={"token_delay_ms": 1}), lease_ms=3000)
    run = await start_orchestrator(cfg)
    bridge = run.orch.state
    assert bridge is not None
    calls: Counter[str] = Counter()
    names = ("submit", "submit_dispatch", "dispatch_or_cursor", "tail", "read")
    _count_calls(bridge.store, calls, *names)
    slot_views = bridge._slots

    def counted_slots(pool: Any) -> Any:
        calls["slot views"] += 1  # once per dispatcher step, and per wake of its wait
        return slot_views(pool)

    bridge._slots = counted_slots  # type: ignore[method-assign]
    n, t0 = 6, time.monotonic()
    streams = [await _stream(run, max_tokens=4) for _ in range(n)]
    elapsed = time.monotonic() - t0
    seen = dict(calls)
    for tid, events in streams:
        kinds = [k for _, k, _ in events]
        assert kinds[0] == "started" and kinds[-1] == "end" and kinds.count("token") == 4
        assert events == _as_logged(await bridge.store.read(tid))  # ids and data: the store's
    assert seen.get("tail", 0) == 0 and seen.get("read", 0) == 0, seen
    assert seen["submit_dispatch"] == n and seen.get("submit", 0) == 0, seen
    # the dispatcher re-syncs every 2 s when nothing rings; it is not woken per task
    assert seen.get("dispatch_or_cursor", 0) <= 2 + int(elapsed / 2.0), (seen, elapsed)
    # ORCH-2596: nor is its wait woken by a submit or a freed slot here (2 per task before)
    assert seen.get("slot views", 0) <= 2 * (2 + int(elapsed / 2.0)), (seen, elapsed)


async def test_a_stream_read_here_follows_the_store_once_the_task_is_canceled(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-2571 with ORCH-2510/2540: a stream of a task running here follows the local
    log until a cancel accepted at the store (as on another instance) takes the task
    away; it then reads the store's log from the next id: exactly one terminal, the
    cancel's, ids contiguous and equal to the store's log, no token after it."""
    cfg = _with_state(mock_config(adapter_options={"token_delay_ms": 20}), lease_ms=3000)
    run = await start_orchestrator(cfg)
    bridge = run.orch.state
    assert bridge is not None
    calls: Counter[str] = Counter()
    _count_calls(bridge.store, calls, "tail")

    canceled: list[int] = []  # the id the stream had reached at the cancel

    async def cancel_mid_stream(events: list[Event3]) -> None:
        if len(events) >= 4 and not canceled:  # mid-stream, read here
            canceled.append(events[-1][0])
            assert calls["tail"] == 0 and events[-1][1] == "token"
            # a cancel accepted at the store, as on another instance
            (running,) = run.orch.tasks.active()
            assert await bridge.store.cancel(running.task_id) == "running"

    tid, events = await _stream(run, cancel_mid_stream, max_tokens=1500)
    assert events == _as_logged(await bridge.store.read(tid))
    assert [i for i, _, _ in events] == list(range(len(events)))
    assert [k for _, k, _ in events].count("end") + [k for _, k, _ in events].count("error") == 1
    assert events[-1][1] == "end" and b'"canceled"' in events[-1][2]
    assert calls["tail"] == 1  # the local log was left for the store's once canceled


def test_a_stored_log_numbers_frames_as_the_store_and_detaches_on_a_gap() -> None:
    """ORCH-2571: frames carry the seqs the store answered, from ``base``; a batch that
    does not follow what the log holds (someone else wrote) detaches it, and nothing
    is guessed; after a terminal the log takes nothing more."""
    log = StoredLog(2)
    log.stored([Event("started", b"{}"), Event("token", b'{"t":"a","i":0}')], 4)
    assert log.frames == [
        encode_event("started", b"{}", 2),
        encode_event("token", b'{"t":"a","i":0}', 3),
    ]
    log.stored([Event("token", b'{"t":"b","i":1}')], 6)  # seq 5, not 4: a gap
    assert log.detached and log.next_seq == 4 and not log.ended
    done = StoredLog(0)
    done.stored([Event("end", b"{}")], 1)
    assert done.ended
    done.detach()
    done.stored([Event("token", b"{}")], 2)
    assert not done.detached and len(done.frames) == 1


async def test_a_task_dispatched_by_its_admission_keeps_its_trace_order(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-2569 with ORCH-7040: the run admission dispatched in the same store call
    starts once admission is done with the record, so the trace holds every span in
    order (admission, queue, dispatch, engine.request, stream.end) as without a store."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    run = await start_orchestrator(_with_state(mock_config(adapter_options={"eos_after": 3})))
    exporter = InMemorySpanExporter()
    run.orch.tracing.add_processor(SimpleSpanProcessor(exporter))
    tid, events = await _stream(run, max_tokens=4)
    assert events[-1][1] == "end"
    await run.orch.tasks.wait_for(lambda: run.orch.get(tid).terminal, 30)
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    order = ["admission", "queue", "dispatch", "engine.request", "stream.end"]
    assert sorted(by_name) == sorted(["task", *order])
    starts = [by_name[n].start_time or 0 for n in order]
    assert starts == sorted(starts)


async def test_a_stream_read_after_the_end_is_served_from_the_kept_log(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-2571: a client that reads the stream after the ``202`` of a task that ran
    and ended here (the two-request flow) is served from the ended log this instance
    kept, without reading the store, with the store's ids; a resume too."""
    run = await start_orchestrator(_with_state(mock_config(adapter_options={"eos_after": 3})))
    bridge = run.orch.state
    assert bridge is not None
    calls: Counter[str] = Counter()
    _count_calls(bridge.store, calls, "tail", "read")
    resp = await run.submit(max_tokens=4)
    tid = (await resp.json())["task_id"]
    await run.orch.tasks.wait_for(lambda: run.orch.get(tid).terminal, 30)
    events = await run.events(tid)
    resumed = await run.events(tid, last_event_id=1)
    assert calls["tail"] == 0 and calls["read"] == 0, calls
    logged = await bridge.store.read(tid)
    assert [(i, e) for i, e, _ in events] == [(ev.seq, ev.kind) for ev in logged]
    assert resumed == events[2:] and events[-1][1] == "end"
