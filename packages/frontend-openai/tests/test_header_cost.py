"""ORCH-9284: the facades read their ``X-Llorch-*`` headers in one pass.

``extras_from`` must give what it gave when it asked starlette's ``Headers.get``
for each header (the first value of a repeated header wins), for every mix of
headers, body extras and metadata, errors included.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from llama_orch.frontends.openai._common import ApiError, Extras, _int, extras_from
from starlette.datastructures import Headers
from starlette.requests import Request


def _extras_before(
    request: Request, metadata: dict[str, str] | None, body: dict[str, object]
) -> Extras:
    # extras_from before ORCH-9284: one Headers.get per header
    meta = metadata or {}
    h = request.headers

    def pick(header: str, name: str) -> tuple[str | None, str]:
        if (v := h.get(header)) is not None:
            return v, header
        if (b := body.get(name)) is not None:
            return str(b), name
        if (m := meta.get(f"llorch_{name}")) is not None:
            return m, f"metadata.llorch_{name}"
        return None, name

    priority, where = pick("x-llorch-priority", "priority")
    if priority is not None and priority not in ("interactive", "batch"):
        raise ApiError(
            400, f"{where} must be 'interactive' or 'batch'", param=where, code="invalid_value"
        )
    deadline, where = pick("x-llorch-deadline-ms", "deadline_ms")
    deadline_ms = _int(deadline, where) if deadline is not None else None
    sid, where = pick("x-llorch-session-id", "session_id")
    session = None
    if sid is not None:
        try:
            session = uuid.UUID(sid)
        except ValueError:
            raise ApiError(
                400, f"{where} must be a UUID", param=where, code="invalid_value"
            ) from None
    return Extras(priority, deadline_ms, session)


def _request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


_values = st.sampled_from(
    ["interactive", "batch", "fast", "250", "0", "x", "ä", str(uuid.UUID(int=7)), "not-a-uuid"]
)
_names = st.sampled_from(
    [b"x-llorch-priority", b"x-llorch-deadline-ms", b"x-llorch-session-id", b"x-llorch-other",
     b"content-type", b"authorization"]
)  # fmt: skip
_headers = st.lists(st.tuples(_names, _values.map(lambda v: v.encode("utf-8"))), max_size=6)
_fields = st.dictionaries(
    st.sampled_from(["priority", "deadline_ms", "session_id"]), _values, max_size=3
)
_meta = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["llorch_priority", "llorch_deadline_ms", "llorch_session_id"]),
        _values,
        max_size=3,
    ),
)


def _outcome(
    fn: Callable[[Request, dict[str, str] | None, dict[str, object]], Extras],
    request: Request,
    meta: dict[str, str] | None,
    body: dict[str, object],
) -> object:
    try:
        return fn(request, meta, body)
    except ApiError as exc:
        return (exc.status, exc.message, exc.param, exc.code)


@given(_headers, _fields, _meta)
def test_extras_are_those_headers_get_gave(
    headers: list[tuple[bytes, bytes]], body: dict[str, object], meta: dict[str, str] | None
) -> None:
    """ORCH-9284: same Extras or the same error as one ``Headers.get`` per header."""
    assert _outcome(extras_from, _request(headers), meta, body) == _outcome(
        _extras_before, _request(headers), meta, body
    )


def test_no_header_lookup_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCH-9284: a request without X-Llorch headers costs no ``Headers`` lookups (each
    miss was a list scan and a KeyError)."""
    looked: list[str] = []
    real = Headers.__getitem__

    def counting(self: Headers, key: str) -> str:
        looked.append(key)
        return real(self, key)

    monkeypatch.setattr(Headers, "__getitem__", counting)
    request = _request([(b"content-type", b"application/json"), (b"x-llorch-priority", b"batch")])
    assert extras_from(request, None, {"deadline_ms": 30}) == Extras("batch", 30, None)
    assert looked == []
