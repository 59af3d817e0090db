"""The error table in .specs/10-orchestratord.md equals errors.HTTP_STATUS (ORCH-2002)."""

from __future__ import annotations

import re
from pathlib import Path

from llama_orch.core.errors import HTTP_STATUS, RETRIABLE, ErrorCode, error_for_code

SPEC = Path(__file__).resolve().parents[2] / ".specs" / "10-orchestratord.md"
ROW = re.compile(
    r"^\|\s*`(?P<code>[A-Z_]+)`\s*\|\s*(?P<status>\d{3})\s*\|\s*(?P<retry>yes|no)\s*\|"
)


def _table() -> list[tuple[str, int, bool]]:
    rows = []
    for line in SPEC.read_text(encoding="utf-8").splitlines():
        if m := ROW.match(line):
            rows.append((m["code"], int(m["status"]), m["retry"] == "yes"))
    return rows


def test_every_code_is_documented_once_with_its_status() -> None:
    rows = _table()
    codes = [code for code, _, _ in rows]
    assert len(codes) == len(set(codes)), f"a code is listed twice: {codes}"
    assert set(codes) == {c.value for c in ErrorCode}
    documented = {code: status for code, status, _ in rows}
    assert documented == {c.value: s for c, s in HTTP_STATUS.items()}


def test_documented_retriable_flags_match_the_code() -> None:
    documented = {code for code, _, retriable in _table() if retriable}
    assert documented == {c.value for c in RETRIABLE}


def test_each_code_has_one_exception_class() -> None:
    """ORCH-1703."""
    for code in ErrorCode:
        cls = error_for_code(code)
        err = cls("boom")
        assert err.code is code
        assert err.status_code == HTTP_STATUS[code]
        assert err.body().code is code
