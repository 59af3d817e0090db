"""Hostile input for the SSE and config parsers, with Hypothesis (ORCH-8041, ORCH-8042)."""

from __future__ import annotations

import json

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_orch.core.config import Config, parse_config
from llama_orch.core.sse import SSEMessage, SSEParser

_line_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=20
)
_event = st.tuples(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8),  # event name
    st.lists(_line_text, min_size=1, max_size=4),  # data lines
    st.one_of(st.none(), st.text(alphabet="0123456789abc", min_size=1, max_size=6)),  # id
)


def _feed_split(wire: bytes, cuts: list[int]) -> list[SSEMessage]:
    parser, got, prev = SSEParser(), [], 0
    for cut in [*sorted(cuts), len(wire)]:
        got += parser.feed(wire[prev:cut])
        prev = cut
    return got


# too_slow: input generation is slow only when the machine is loaded (seen at load 9)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event, max_size=12), st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_any_events_any_line_ending_any_split(
    events: list[tuple[str, list[str], str | None]], eol: str, data: st.DataObject
) -> None:
    """ORCH-8041: multi-line data, ids and names come back exactly, however it is split."""
    wire = ""
    for name, lines, event_id in events:
        if event_id is not None:
            wire += f"id: {event_id}{eol}"
        wire += f"event: {name}{eol}" + "".join(f"data: {line}{eol}" for line in lines) + eol
    raw = wire.encode()
    got = _feed_split(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    expected, last_id = [], None
    for name, lines, event_id in events:
        last_id = event_id if event_id is not None else last_id
        expected.append(SSEMessage(name, "\n".join(lines), last_id))
    assert got == expected


@settings(max_examples=500)
@given(st.binary(max_size=400), st.data())
def test_arbitrary_bytes_never_raise(raw: bytes, data: st.DataObject) -> None:
    """ORCH-8041: any bytes, any split: messages or nothing, never an exception."""
    got = _feed_split(raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    assert all(isinstance(m, SSEMessage) for m in got)
    assert got == SSEParser().feed(raw)  # the split does not change the result


_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=12),
)  # fmt: skip
_KEYS = [
    "server", "admission", "sessions", "scheduling", "auth", "limits", "pools", "id",
    "engine", "keys", "hash", "role", "tenant", "port", "host", "certfile", "keyfile",
    "enabled", "tenants", "priority_weights", "interactive", "batch", "max_body_bytes",
    "endpoints", "adapter_options", "rps", "burst", "weight", "allow_cpu_inference",
]  # fmt: skip
_json_doc = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=6)), inner, max_size=5),
    ),
    max_leaves=25,
)


def _parse_or_reject(data: bytes | str, fmt: str) -> None:
    try:
        cfg = parse_config(data, fmt=fmt)  # type: ignore[arg-type]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return
    assert isinstance(cfg, Config)


@settings(max_examples=400)
@given(_json_doc)
def test_config_parser_accepts_or_rejects_any_json(doc: object) -> None:
    """ORCH-8042: a Config or a ValidationError/DecodeError, nothing else."""
    _parse_or_reject(json.dumps(doc), "json")


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=200), _json_doc.map(lambda d: json.dumps(d).encode())))
def test_config_parser_accepts_or_rejects_any_yaml(raw: bytes) -> None:
    """ORCH-8042: the YAML path too, on arbitrary bytes and on YAML (JSON) documents."""
    _parse_or_reject(raw, "yaml")
