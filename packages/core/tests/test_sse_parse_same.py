"""ORCH-2824: the SSE parser's per-token path gives the messages the parser gave before.

``RefParser`` is ``SSEParser`` as it was before ORCH-2824 (every line through ``_line``,
a frozen dataclass per message); for any wire of SSE lines and any bytes, split
anywhere, both give the same messages (event, data, id, retry) and the same
``last_event_id``.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_orch.core.sse import SSEMessage, SSEParser


@dataclass(frozen=True, slots=True)
class RefMessage:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class RefParser:
    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self._saw_cr = False
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[RefMessage]:
        if not chunk:
            return []
        if self._saw_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._saw_cr = chunk.endswith(b"\r")
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        out: list[RefMessage] = []
        for line in buf[:end].decode("utf-8", errors="replace").split("\n"):
            msg = self._line(line)
            if msg is not None:
                out.append(msg)
        return out

    def _line(self, line: str) -> RefMessage | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> RefMessage | None:
        if self._id is not None:
            self.last_event_id = self._id
        if not self._data:
            self._event = ""
            self._retry = None
            return None
        msg = RefMessage(self._event or "message", "\n".join(self._data), self._id, self._retry)
        self._event, self._data, self._retry = "", [], None
        return msg


def _both(wire: bytes, cuts: list[int]) -> None:
    new, ref = SSEParser(), RefParser()
    got: list[tuple[object, ...]] = []
    want: list[tuple[object, ...]] = []
    prev = 0
    for cut in [*sorted(cuts), len(wire)]:
        got += [(m.event, m.data, m.id, m.retry) for m in new.feed(wire[prev:cut])]
        want += [(m.event, m.data, m.id, m.retry) for m in ref.feed(wire[prev:cut])]
        assert got == want
        assert new.last_event_id == ref.last_event_id
        prev = cut


_value = st.lists(
    st.sampled_from(["a", " ", ":", "é", "\x00", "1", "[DONE]", "{}"]), max_size=6
).map("".join)
_line = st.one_of(
    st.just(""),
    st.builds(lambda v: "data:" + v, _value),
    st.builds(lambda v: "data: " + v, _value),
    st.just("data"),
    st.just("data "),
    st.builds(lambda v: "event:" + v, _value),
    st.builds(lambda v: "id: " + v, _value),
    st.builds(lambda v: "retry: " + v, st.sampled_from(["10", "x", "", "7 "])),
    st.builds(lambda v: ":" + v, _value),
    st.builds(lambda v: "datax:" + v, _value),
    _value,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_line, max_size=24), st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_any_sse_lines_any_split_give_the_old_messages(
    lines: list[str], eol: str, data: st.DataObject
) -> None:
    raw = "".join(line + eol for line in lines).encode()
    _both(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))


@settings(max_examples=400)
@given(st.binary(max_size=300), st.data())
def test_any_bytes_any_split_give_the_old_messages(raw: bytes, data: st.DataObject) -> None:
    _both(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))


def test_a_message_is_a_frozen_value() -> None:
    """Equal by value, hashable, immutable, positional or keyword, defaults as before."""
    one = SSEMessage("message", "x")
    assert one == SSEMessage(event="message", data="x", id=None, retry=None)
    assert (one.id, one.retry) == (None, None)
    assert hash(one) == hash(SSEMessage("message", "x"))
    try:
        one.data = "y"  # type: ignore[misc]
    except AttributeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("an SSEMessage must be immutable")
    assert isinstance(one, msgspec.Struct)
