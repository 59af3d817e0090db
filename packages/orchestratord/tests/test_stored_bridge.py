"""The store bridge's work per relayed token (ORCH-2623, ORCH-2624, issue #13): the run's
stored log takes the frames the task record encoded, and the writers of all running
tasks share one sender that answers each of them directly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from llama_orch.core.api import EndEvent, QueuedEvent, TokenEvent
from llama_orch.core.sse import encode_event
from llama_orch.core.state_store import Event, Fenced, StoreUnavailable
from llama_orch.orchestratord.stored_appends import AppendBatcher, TaskWriter
from llama_orch.orchestratord.stored_local import StoredLog, StoredLogs
from llama_orch.orchestratord.tasks import TaskRecord

from .conftest import bare_record

_TOKEN = b'{"t":"a","i":0}'


def test_a_stored_log_takes_the_records_frames_when_the_numbers_agree() -> None:
    """ORCH-2623: the batch's first index in the record is the store's seq of its first
    event: the log holds the record's very frames (one encode), the bytes a read of the
    store's log gives."""
    frames = [encode_event("started", b"{}", 2), encode_event("token", _TOKEN, 3)]
    log = StoredLog(2)
    log.stored([Event("started", b"{}"), Event("token", _TOKEN)], 4, frames, 2)
    assert log.frames == [encode_event("started", b"{}", 2), encode_event("token", _TOKEN, 3)]
    assert all(a is b for a, b in zip(log.frames, frames, strict=True))


@pytest.mark.parametrize("at", [-1, 0, 3])
def test_a_stored_log_encodes_with_the_stores_seqs_when_they_differ(at: int) -> None:
    """ORCH-2623: the record numbers the events otherwise (here its frames say ids 0 and
    1, the store's seqs are 2 and 3), or a frame is missing (-1): encoded with the
    store's seqs, never the record's ids."""
    frames = [encode_event("started", b"{}", max(at, 0)), encode_event("token", _TOKEN, at + 1)]
    log = StoredLog(2)
    log.stored([Event("started", b"{}"), Event("token", _TOKEN)], 4, frames, at)
    assert log.frames == [encode_event("started", b"{}", 2), encode_event("token", _TOKEN, 3)]


class _Refused:
    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int, _attrs: dict[str, str]) -> None:
        self.n += n


class _Metrics:
    def __init__(self) -> None:
        self.store_writes_refused = _Refused()


class _Options:
    lease_ms = 300


class _Store:
    """``append_many`` that records each call and answers from a script: a next seq per
    batch, or an exception for the whole call; it answers when ``gate`` is set."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, int, list[Event]]]] = []
        self.seqs: dict[str, int] = {}
        self.fail: list[BaseException | None] = []  # per call, in order
        self.refuse: set[str] = set()
        self.gate = asyncio.Event()
        self.gate.set()

    async def append_many(
        self, batches: Sequence[tuple[str, int, Sequence[Event]]]
    ) -> list[int | BaseException]:
        self.calls.append([(t, e, list(evs)) for t, e, evs in batches])
        await self.gate.wait()
        if self.fail:
            exc = self.fail.pop(0)
            if exc is not None:
                raise exc
        out: list[int | BaseException] = []
        for tid, _epoch, evs in batches:
            if tid in self.refuse:
                out.append(Fenced(tid))
                continue
            self.seqs[tid] = self.seqs.get(tid, 0) + len(evs)
            out.append(self.seqs[tid])
        return out


class _Bridge:
    """What a :class:`TaskWriter` uses of the bridge."""

    def __init__(self, store: _Store) -> None:
        self.store = store
        self.metrics = _Metrics()
        self.options = _Options()
        self.logs = StoredLogs(keep_s=60.0)
        self.lost: list[str] = []
        self.chores: list[asyncio.Task[None]] = []
        self.timed_ops: list[str] = []
        self.appends = AppendBatcher(
            store,  # type: ignore[arg-type]
            timed=self._timed,
            track=self.chores.append,
        )

    @contextlib.contextmanager
    def _timed(self, op: str) -> Iterator[None]:
        self.timed_ops.append(op)
        yield

    def lose(self, task_id: str) -> None:
        self.lost.append(task_id)

    def writer(self, task_id: str) -> tuple[TaskRecord, TaskWriter]:
        rec = bare_record()
        rec.task_id = task_id
        log = self.logs.live[task_id] = StoredLog(0)
        w = TaskWriter(self, rec, 7, log)  # type: ignore[arg-type]
        rec.sink = w.put
        return rec, w


def _token(i: int) -> TokenEvent:
    return TokenEvent(t=f"w{i}", i=i)


async def test_writers_share_one_sender_and_keep_their_order() -> None:
    """ORCH-2624 (with ORCH-2524, ORCH-2565): the events two tasks append in one turn
    leave in one call; what comes while it is in flight leaves in the next, in order;
    no asyncio task per batch (the sender is the only one); each log holds its record's
    frames with the store's seqs (ORCH-2623)."""
    store = _Store()
    bridge = _Bridge(store)
    (ra, wa), (rb, wb) = bridge.writer("a"), bridge.writer("b")
    before = len(asyncio.all_tasks())
    store.gate.clear()
    for rec in (ra, rb):
        rec.append(_token(0))
    await asyncio.sleep(0.01)  # the first call is in flight
    assert len(store.calls) == 1 and [t for t, _, _ in store.calls[0]] == ["a", "b"]
    for i in range(1, 40):  # all arrive while it is in flight
        ra.append(_token(i))
        if i % 2:
            rb.append(_token(i))
    assert len(asyncio.all_tasks()) == before + 1  # the sender, no task per batch
    ra.finish(EndEvent(reason="stop", tokens_out=40, decode_ms=1))
    store.gate.set()
    await wa.settled()
    await wb.settled()
    assert len(store.calls) == 2  # the 60 events that came meanwhile: one more call
    assert store.calls[1][0][2][-1].kind == "end"  # the terminal last of its batch
    for rec, w in ((ra, wa), (rb, wb)):
        sent = [ev for call in store.calls for t, _, evs in call if t == rec.task_id for ev in evs]
        want = rec.frames_so_far()
        assert [encode_event(ev.kind, ev.data, i) for i, ev in enumerate(sent)] == want
        assert w.log.frames == want
        assert all(a is b for a, b in zip(w.log.frames, want, strict=True))  # one encode
        assert w.epoch == 7 and all(e == 7 for call in store.calls for _, e, _ in call)
    assert wa.log.ended and not wb.log.ended
    assert bridge.timed_ops == ["append", "append"]  # one record per call
    await asyncio.gather(*bridge.chores)


async def test_an_unreachable_store_retries_a_batch_in_front_then_loses_the_run() -> None:
    """ORCH-2624: a call the store could not take is sent again after a pause, in front
    of the events that came since, so the log's order and ids hold; after a lease of
    failed sends the run is lost and the writer writes no more."""
    store = _Store()
    bridge = _Bridge(store)
    rec, w = bridge.writer("a")
    store.fail = [StoreUnavailable("down", retry_after_ms=100), None]
    rec.append(_token(0))
    await asyncio.sleep(0.01)
    rec.append(_token(1))  # while the failed batch waits for its retry
    await w.settled()
    assert [len(c[0][2]) for c in store.calls] == [1, 2]
    assert w.log.frames == rec.frames_so_far() and not bridge.lost
    store.fail = [StoreUnavailable("down", retry_after_ms=100)] * 20
    rec.append(_token(2))
    await asyncio.wait_for(w.settled(), 5.0)
    assert bridge.lost == ["a"] and w.dead and w.log.detached
    rec.append(_token(3))  # dropped: the run is lost
    await asyncio.sleep(0.01)
    calls = len(store.calls)
    assert 3 <= calls - 2 <= 5  # one send every 0.1 s for one lease (0.3 s)
    await asyncio.sleep(0.15)
    assert len(store.calls) == calls and len(w.log.frames) == 2
    await asyncio.gather(*bridge.chores)


async def test_a_refused_batch_stops_its_writer() -> None:
    """ORCH-2624 with ORCH-2525: a batch fenced (another instance owns the task) stops
    that writer only, counted as a refused write; the other task's batch in the same
    call is stored."""
    store = _Store()
    bridge = _Bridge(store)
    (ra, wa), (rb, wb) = bridge.writer("a"), bridge.writer("b")
    store.refuse.add("a")
    ra.append(_token(0))
    rb.append(_token(0))
    await wa.settled()
    await wb.settled()
    assert len(store.calls) == 1
    assert wa.dead and bridge.lost == ["a"] and bridge.metrics.store_writes_refused.n == 1
    assert not wb.dead and wb.log.frames == rb.frames_so_far()
    ra.append(_token(1))
    rb.append(_token(1))
    await wb.settled()
    assert [t for t, _, _ in store.calls[1]] == ["b"]
    await asyncio.gather(*bridge.chores)


def test_a_packed_queued_event_is_encoded_with_the_stores_seq() -> None:
    """ORCH-2623: a ``queued`` event the record keeps packed (ORCH-2790) has no frame to
    hand over: its batch is encoded with the store's seqs, the same bytes."""

    async def go() -> None:
        store = _Store()
        bridge = _Bridge(store)
        rec, w = bridge.writer("a")
        rec.append(QueuedEvent(queue_position=1, predicted_start_ms=5))
        rec.append(_token(0))
        await w.settled()
        assert w.log.frames == rec.frames_so_far()
        await asyncio.gather(*bridge.chores)

    asyncio.run(go())


def test_the_record_hands_its_frame_and_index_to_the_sink() -> None:
    """ORCH-2623: the sink gets each event's kind, data, the record's frame (None for a
    packed ``queued`` event) and its index in the record's log."""
    rec = bare_record()
    got: list[tuple[str, bytes, bytes | None, int]] = []
    rec.sink = lambda *a: got.append(a)
    rec.append(QueuedEvent(queue_position=1, predicted_start_ms=5))
    rec.append(_token(0))
    rec.finish(EndEvent(reason="stop", tokens_out=1, decode_ms=1))
    frames = rec.frames_so_far()
    assert [i for *_, i in got] == [0, 1, 2]
    assert got[0][2] is None and got[1][2] is frames[1] and got[2][2] is frames[2]
    assert [encode_event(k, d, i) for k, d, _, i in got] == frames


async def test_a_task_running_here_streams_the_records_frames(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-2623 through orchestratord on the memory store: the stored log of a task
    run here holds the record's frames themselves, and they are the store's log."""
    import msgspec
    from llama_orch.core.config import Config

    doc = msgspec.to_builtins(mock_config(adapter_options={"token_delay_ms": 1}))
    doc["state"] = {"backend": "memory", "lease_ms": 3000}
    run = await start_orchestrator(msgspec.convert(doc, Config))
    bridge = run.orch.state
    assert bridge is not None
    async with run.http.post(run.url + "/v1/tasks", json={"prompt": "hi", "max_tokens": 6}) as resp:
        assert resp.status == 202
        tid = (await resp.json())["task_id"]
    rec = run.orch.get(tid)
    await asyncio.wait_for(rec.ended.wait(), 10)
    log = bridge.logs.get(tid)
    for _ in range(100):  # the terminal's append is answered just after the end
        if log is not None and log.ended:
            break
        await asyncio.sleep(0.01)
        log = bridge.logs.get(tid)
    assert log is not None and log.ended
    stored = [encode_event(e.kind, e.data, e.seq) for e in await bridge.store.read(tid)]
    assert log.frames == stored[log.base :]
    mine = rec.frames_so_far()
    assert log.base == 0 and all(a is b for a, b in zip(log.frames, mine, strict=True))
