"""ORCH-2790: a task's ``queued`` events are kept in its log as their numbers and encoded
when read; every reader gets the bytes an encoding at append gives (issue #20: RSS per
queued task)."""

from __future__ import annotations

import asyncio

import msgspec
from hypothesis import given, settings
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
    # the structural point of ORCH-2790: no bytes object per queued event
    assert [type(f) for f in rec._frames] == [int, int]
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
def test_every_reader_gets_the_bytes_an_encoding_at_append_gives(
    events: list[StreamEvent], chunk: int
) -> None:
    rec = _record()
    sunk: list[tuple[str, bytes]] = []
    rec.sink = lambda tag, data: sunk.append((tag, data))
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
