"""ORCH-2790, ORCH-2747: a task's ``queued`` events are kept in its log as their numbers and encoded
when read; every reader gets the bytes an encoding at append gives (issue #20: RSS per
queued task)."""

from __future__ import annotations

import asyncio

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st
from llama_orch.core.api import EndEvent, QueuedEvent, StartedEvent, StreamEvent, TokenEvent
from llama_orch.core.sse import encode_event

from .conftest import bare_record as _record

_enc = msgspec.json.Encoder()


def _expected(events: list[StreamEvent]) -> list[bytes]:
    out = []
    for i, ev in enumerate(events):
        tag = type(ev).__struct_config__.tag
        assert isinstance(tag, str)
        out.append(encode_event(tag, _enc.encode(ev), i))
    return out


def test_a_queued_event_is_held_as_its_numbers_not_its_frame() -> None:
    rec = _record()
    rec.append(QueuedEvent(queue_position=3999, predicted_start_ms=7_200_000))
    rec.append(QueuedEvent(queue_position=12, predicted_start_ms=5, predicted_finish_ms=90))
    # the structural point of ORCH-2790/2747: no bytes object per queued event, and
    # the log's leading ones 16 bytes each in one bytes object, no list slot or int
    assert rec._frames == [] and len(rec._head) == 2 * 16
    assert rec.frames_so_far() == [
        b'id: 0\nevent: queued\ndata: {"type":"queued","queue_position":3999,'
        b'"predicted_start_ms":7200000}\n\n',
        b'id: 1\nevent: queued\ndata: {"type":"queued","queue_position":12,"predicted_start_ms":5,'
        b'"predicted_finish_ms":90}\n\n',
    ]


_ms = st.one_of(
    st.integers(min_value=0, max_value=(1 << 48) + 2),
    st.integers(min_value=-(1 << 60), max_value=1 << 60),
)
_queued = st.builds(
    QueuedEvent,
    queue_position=st.one_of(
        st.integers(min_value=0, max_value=5000), st.integers(min_value=-5, max_value=1 << 33)
    ),
    predicted_start_ms=_ms,
    predicted_finish_ms=st.one_of(st.none(), _ms),
)
_other = st.one_of(
    st.builds(TokenEvent, t=st.text(max_size=8), i=st.integers(0, 100)),
    st.builds(
        StartedEvent,
        queue_position=st.integers(0, 9),
        predicted_start_ms=st.integers(0, 9),
        queue_wait_ms=st.integers(0, 9),
        pool_id=st.just("p"),
        replica_id=st.just("r0"),
        engine=st.just("mock"),
    ),
)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.one_of(_queued, _other), max_size=12), chunk=st.integers(1, 400))
@example(  # a finish of -1 packed as 0 ("none") and left the field out (found in session 18)
    events=[QueuedEvent(queue_position=0, predicted_start_ms=0, predicted_finish_ms=-1)],
    chunk=400,
)
def test_every_reader_gets_the_bytes_an_encoding_at_append_gives(
    events: list[StreamEvent], chunk: int
) -> None:
    rec = _record()
    sunk: list[tuple[str, bytes]] = []
    rec.sink = lambda tag, data, _frame, _index: sunk.append((tag, data))
    for ev in events:
        assert rec.append(ev)
    rec.finish(EndEvent(reason="stop", tokens_out=0, decode_ms=0))
    want = _expected([*events, EndEvent(reason="stop", tokens_out=0, decode_ms=0)])
    assert rec.event_count == len(want)
    assert rec.frames_so_far() == want
    # the state store's copy (ORCH-2524) gets the same data as before
    assert [encode_event(t, d, i) for i, (t, d) in enumerate(sunk)] == want

    async def read(start: int) -> list[bytes]:
        return [c async for c in rec.frames(start, chunk)]

    for start in (0, len(want) // 2, len(want) - 1):
        got = asyncio.run(read(start))
        assert b"".join(got) == b"".join(want[start:])
        assert all(g for g in got)


def test_queued_events_after_another_event_stay_packed_ints_in_the_list() -> None:
    """ORCH-2747: only the leading queued events go into the head; a requeued task's
    later ones are packed ints in the list (ORCH-2790), numbered after the head's."""
    rec = _record()
    first = [QueuedEvent(queue_position=p, predicted_start_ms=10 * p) for p in (3, 2, 1)]
    started = TokenEvent(t="a", i=0)
    later = QueuedEvent(queue_position=7, predicted_start_ms=70, predicted_finish_ms=90)
    for ev in (*first, started, later):
        assert rec.append(ev)
    assert len(rec._head) == 3 * 16 and [type(f) for f in rec._frames] == [bytes, int]
    assert rec.event_count == 5
    assert rec.frames_so_far() == _expected([*first, started, later])


def test_a_reader_waiting_while_the_head_grows_gets_every_frame() -> None:
    """ORCH-2747: a reader parked before the first queued event, woken as the head
    grows and then as the list takes over, reads each event once, in order."""
    events: list[StreamEvent] = [
        QueuedEvent(queue_position=2, predicted_start_ms=200),
        QueuedEvent(queue_position=1, predicted_start_ms=100, predicted_finish_ms=300),
        TokenEvent(t="a", i=0),
        QueuedEvent(queue_position=1, predicted_start_ms=1 << 50),  # does not fit: bytes
    ]
    end = EndEvent(reason="stop", tokens_out=1, decode_ms=0)

    async def run() -> list[bytes]:
        rec = _record()
        got: list[bytes] = []

        async def read() -> None:
            async for chunk in rec.frames(0, 1):
                got.append(chunk)

        reader = asyncio.create_task(read())
        for ev in events:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert rec.append(ev)
        await asyncio.sleep(0)
        rec.finish(end)
        await reader
        return got

    assert asyncio.run(run()) == _expected([*events, end])


def test_ten_queued_events_cost_a_third_of_ints_in_a_list() -> None:
    """ORCH-2747: traced bytes of a record's 10 leading queued events (fails with them
    as ints in the list: ~48 B each plus the list's slots)."""
    import tracemalloc

    recs = [_record() for _ in range(200)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for rec in recs:
            for p in range(10):
                rec.append(QueuedEvent(queue_position=4000 - p, predicted_start_ms=9_000_000 + p))
        per_record = (tracemalloc.get_traced_memory()[0] - before) / len(recs)
    finally:
        tracemalloc.stop()
    assert per_record < 260, per_record
