"""ORCH-2001/ORCH-2002: one envelope, one HTTP status per code, tested as a table."""

from __future__ import annotations

import msgspec
import pytest
from llama_orch.core.errors import HTTP_STATUS, ErrorBody, ErrorCode, OrchError, error_for_code

EXPECTED = {
    "ADMISSION_REJECT": 429,
    "QUEUE_FULL_DROP_LRU": 429,
    "INVALID_PARAMS": 400,
    "POOL_UNREADY": 503,
    "POOL_UNAVAILABLE": 503,
    "REPLICA_EXHAUSTED": 503,
    "DECODE_TIMEOUT": 504,
    "WORKER_RESET": 502,
    "INTERNAL": 500,
    "DEADLINE_UNMET": 400,
    "MODEL_DEPRECATED": 410,
    "UNTRUSTED_ARTIFACT": 403,
    "NOT_FOUND": 404,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "REQUEST_TOO_LARGE": 413,
    "HEADERS_TOO_LARGE": 431,
}


def test_every_code_has_exactly_the_documented_status():
    assert {c.value: s for c, s in HTTP_STATUS.items()} == EXPECTED
    assert set(HTTP_STATUS) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_exception_class_per_code(code: ErrorCode):
    cls = error_for_code(code)
    assert issubclass(cls, OrchError) and cls.code is code
    exc = cls("boom", pool_id="p", engine="e")
    assert exc.status_code == EXPECTED[code.value]
    body = msgspec.json.decode(msgspec.json.encode(exc.body()), type=ErrorBody)
    assert body.code is code and body.message == "boom" and body.pool_id == "p"


def test_envelope_omits_absent_fields():
    raw = msgspec.json.decode(msgspec.json.encode(error_for_code(ErrorCode.INTERNAL)("x").body()))
    assert raw == {"code": "INTERNAL", "message": "x", "retriable": False}
