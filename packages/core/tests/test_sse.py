"""ORCH-1201: SSE framing round trip, split reads, comments, CRLF."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from llama_orch.core.sse import SSEMessage, SSEParser, encode_event


def test_encode_frame_exact_bytes():
    assert encode_event("token", b'{"t":"a","i":0}', 3) == (
        b'id: 3\nevent: token\ndata: {"t":"a","i":0}\n\n'
    )


def test_comments_crlf_optional_space_and_multiline():
    p = SSEParser()
    out = p.feed(b': keep-alive\r\n\r\ndata:{"a":1}\r\n\r\nevent: x\ndata: l1\ndata: l2\n\n')
    assert out == [SSEMessage("message", '{"a":1}'), SSEMessage("x", "l1\nl2")]


def test_id_persists_and_last_event_id_tracks():
    p = SSEParser()
    out = p.feed(b"id: 7\ndata: a\n\ndata: b\n\n")
    assert [m.id for m in out] == ["7", "7"] and p.last_event_id == "7"


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=30), max_size=20
    ),
    st.data(),
)
def test_any_split_of_encoded_frames_parses_back(payloads: list[str], data: st.DataObject):
    wire = b"".join(encode_event("token", p.encode(), i) for i, p in enumerate(payloads))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    parser, got = SSEParser(), []
    prev = 0
    for cut in [*cuts, len(wire)]:
        got += parser.feed(wire[prev:cut])
        prev = cut
    assert [(m.id, m.data) for m in got] == [(str(i), p) for i, p in enumerate(payloads)]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["data: x", "data:é✓", "event: e", "id: 4", ": c", "", "data"]),
            st.sampled_from(["\n", "\r\n", "\r"]),
        ),
        max_size=25,
    ),
    st.data(),
)
def test_mixed_line_endings_parse_the_same_under_any_split(
    lines: list[tuple[str, str]], data: st.DataObject
):
    wire = "".join(text + end for text, end in lines).encode()
    whole = SSEParser().feed(wire)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    parser, got, prev = SSEParser(), [], 0
    for cut in [*cuts, len(wire)]:
        got += parser.feed(wire[prev:cut])
        prev = cut
    assert got == whole
