"""ORCH-2956: a facade reads a task's events from this instance's log by their place in
it and their data line, the same numbered events as the frames' ``id:`` and ``event:``
lines gave (the code before, kept here as the reference)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, NoReturn

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.api import (
    EndEvent,
    ErrorEvent,
    MetricsEvent,
    QueuedEvent,
    StartedEvent,
    StreamEvent,
    TokenEvent,
)
from llama_orch.orchestratord import frontends
from llama_orch.orchestratord.frontends import FrontendHost
from llama_orch.orchestratord.tasks import TaskRecord

_REF_DECODERS: dict[bytes, msgspec.json.Decoder[Any]] = {
    b"queued": msgspec.json.Decoder(QueuedEvent),
    b"started": msgspec.json.Decoder(StartedEvent),
    b"token": msgspec.json.Decoder(TokenEvent),
    b"metrics": msgspec.json.Decoder(MetricsEvent),
    b"end": msgspec.json.Decoder(EndEvent),
    b"error": msgspec.json.Decoder(ErrorEvent),
}


def _ref_decode_frame(frame: bytes) -> tuple[int, StreamEvent]:
    """242e426's ``frontends._decode_frame``."""
    head, _, rest = frame.partition(b"\nevent: ")
    name, _, data = rest.partition(b"\ndata: ")
    event: StreamEvent = _REF_DECODERS[name].decode(data.rstrip(b"\n"))
    return int(head[4:]), event


async def _ref_events(rec: TaskRecord, start: int) -> list[tuple[int, StreamEvent]]:
    """242e426's ``FrontendHost.events`` without a state store."""
    return [_ref_decode_frame(frame) async for frame in rec.frames(start, 1)]


async def _ref_batches(rec: TaskRecord, start: int) -> list[list[tuple[int, StreamEvent]]]:
    """242e426's ``FrontendHost.event_batches`` without a state store."""
    out = []
    async for chunk in rec.frames(start):
        out.append([_ref_decode_frame(f) for f in chunk.split(b"\n\n") if f])
    return out


def _encodable(ev: StreamEvent) -> bool:
    try:
        got = msgspec.json.decode(msgspec.json.encode(ev), type=type(ev))
    except (msgspec.EncodeError, msgspec.ValidationError, OverflowError):
        return False
    return bool(got == ev)


_body = st.one_of(
    st.from_type(QueuedEvent),
    st.from_type(StartedEvent),
    st.from_type(TokenEvent),
    st.from_type(MetricsEvent),
    # small, in-range queued events: the record packs these (ORCH-2747, ORCH-2790)
    st.builds(
        QueuedEvent,
        queue_position=st.integers(0, 50),
        predicted_start_ms=st.integers(0, 10_000),
        predicted_finish_ms=st.none() | st.integers(0, 10_000),
    ),
    st.builds(TokenEvent, t=st.text(max_size=8), i=st.integers(0, 10_000)),
).filter(_encodable)
_last = st.one_of(st.from_type(EndEvent), st.from_type(ErrorEvent)).filter(_encodable)


def _record(events: list[StreamEvent], last: EndEvent | ErrorEvent) -> TaskRecord:
    req = GenerateRequest(task_id="t", prompt="p", max_tokens=8, seed=1)
    rec = TaskRecord("t", "pool", "mock", "interactive", req, 1)
    for ev in events:
        assert rec.append(ev)
    assert rec.finish(last)
    return rec


def _host() -> FrontendHost:
    # no state store: the record's own log (the path ORCH-2956 changed)
    return FrontendHost(SimpleNamespace(state=None), SimpleNamespace())  # type: ignore[arg-type]


async def _events(host: FrontendHost, rec: TaskRecord, start: int) -> list[tuple[int, Any]]:
    return [pair async for pair in host.events(rec, start)]


async def _batches(host: FrontendHost, rec: TaskRecord, start: int) -> list[list[Any]]:
    return [list(batch) async for batch in host.event_batches(rec, start)]


def _same(got: object, want: object) -> None:
    assert got == want
    # equal and of the same classes, event by event
    assert repr(got) == repr(want)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_body, max_size=12),
    last=_last,
    start=st.integers(-2, 16),
)
def test_the_events_are_those_the_frames_named(
    events: list[StreamEvent], last: EndEvent | ErrorEvent, start: int
) -> None:
    """Any log (queued events packed or not, any field values), read from any place:
    ``events``, ``event_batches`` (the same batches) and ``events_now`` give what the
    frames' ``id:`` and ``event:`` lines with the named type's decoder gave."""
    rec, host = _record(events, last), _host()
    _same(asyncio.run(_events(host, rec, start)), asyncio.run(_ref_events(rec, start)))
    _same(asyncio.run(_batches(host, rec, start)), asyncio.run(_ref_batches(rec, start)))
    _same(host.events_now(rec), [_ref_decode_frame(f)[1] for f in rec.frames_so_far()])


def test_a_live_reader_gets_each_batch_as_appended() -> None:
    """A reader parked before the events exist gets them numbered from its start, in
    the batches the log had when it woke."""

    async def run() -> tuple[list[list[Any]], list[list[Any]]]:
        req = GenerateRequest(task_id="t", prompt="p", max_tokens=8, seed=1)
        rec = TaskRecord("t", "pool", "mock", "interactive", req, 1)
        reader = asyncio.create_task(_batches(_host(), rec, 0))
        await asyncio.sleep(0)
        for i in range(3):
            rec.append(TokenEvent(f"w{i}", i))
            rec.append(TokenEvent(f"x{i}", i))
            await asyncio.sleep(0)
        rec.finish(EndEvent(tokens_out=6, decode_ms=1, reason="stop"))
        return await reader, await _ref_batches(rec, 0)

    got, ref_after = asyncio.run(run())
    assert [pair for batch in got for pair in batch] == [p for b in ref_after for p in b]
    assert [n for n, _ in got[0]] == [0, 1]  # two tokens appended before the wake
    assert len(got) == 4


def test_the_own_log_is_not_parsed_by_frame_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCH-2956: this instance's log is read without parsing each frame's ``id:`` and
    ``event:`` lines (``_decode_frame``, still the state store's path). Fails on
    242e426, whose readers decoded every frame with it."""

    def parsed(frame: bytes) -> NoReturn:
        raise AssertionError("a frame of the own log parsed by its id and event lines")

    monkeypatch.setattr(frontends, "_decode_frame", parsed)
    rec = _record(
        [TokenEvent("a", 0), TokenEvent("b", 1)], EndEvent(tokens_out=2, decode_ms=1, reason="stop")
    )
    host = _host()
    assert [n for n, _ in asyncio.run(_events(host, rec, 0))] == [0, 1, 2]
    assert [n for b in asyncio.run(_batches(host, rec, 1)) for n, _ in b] == [1, 2]
    assert len(host.events_now(rec)) == 3
