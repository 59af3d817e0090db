"""ORCH-2804: the task-end log line's text unchanged, its record as the stdlib's, one write.

The formatter before ORCH-2804 is kept here as ``ref_format`` (a dictionary for the
generic encoder); the line must be equal to it, byte for byte, for any values.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import IO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.errors import ErrorCode
from llama_orch.orchestratord import logline, main, telemetry
from llama_orch.orchestratord.telemetry import TASK_LOG_FIELDS, log_task_end, task_end_record


def ref_format(record: logging.LogRecord) -> str:
    """``main.JsonFormatter.format`` as it was before ORCH-2804."""
    out: dict[str, object] = {
        "ts": round(record.created, 3),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    attrs = record.__dict__
    for key in logline.FIELDS:
        if key in attrs:
            out[key] = attrs[key]
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return json.dumps(out, default=str)


class Prio(enum.IntEnum):
    LOW = 1


class Odd:
    def __str__(self) -> str:
        return "odd \u00e9\n"


_values = st.one_of(
    st.text(),  # any code point: escapes, surrogates, non-ASCII
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and the infinities included
    st.none(),
    st.booleans(),
    st.sampled_from([Prio.LOW, ErrorCode.ADMISSION_REJECT, Odd()]),
    st.lists(st.one_of(st.integers(), st.text(max_size=4), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.one_of(st.floats(), st.text(max_size=4)), max_size=3),
)
_record_fields = st.dictionaries(
    st.sampled_from(logline.FIELDS), _values, max_size=len(logline.FIELDS)
)


@settings(max_examples=400, deadline=None)
@given(
    fields=_record_fields,
    msg=st.text(),
    name=st.text(min_size=1),
    created=st.floats(min_value=0, max_value=4e9),
)
def test_the_line_is_the_old_formatters_byte_for_byte(
    fields: dict[str, object], msg: str, name: str, created: float
) -> None:
    """ORCH-2804 (c): same fields, order, values, separators and escapes as the
    dictionary given to the generic encoder, for any values of any of the fields."""
    record = logging.LogRecord(name, logging.WARNING, "f.py", 1, "%s", (msg,), None)
    record.created = created
    record.__dict__.update(fields)
    assert main.JsonFormatter().format(record) == ref_format(record)


def test_the_line_with_an_exception_is_the_old_formatters() -> None:
    try:
        raise ValueError("bad \u2603")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f.py", 1, "m", (), sys.exc_info())
    record.__dict__.update({"job_id": "t", "instance_id": "i"})
    line = main.JsonFormatter().format(record)
    assert line == ref_format(record)
    assert '"exc": "Traceback' in line


@pytest.fixture
def flags(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    yield


def _task_fields() -> dict[str, object]:
    return {k: f"v-{k}" for k in TASK_LOG_FIELDS} | {"ctx": 4096, "error_code": None}


_TIMES = ("created", "msecs", "relativeCreated")


@pytest.mark.parametrize("daemon", [True, False])
def test_the_record_is_the_stdlibs_but_for_its_place_and_time(flags: None, daemon: bool) -> None:
    """ORCH-2804 (a, b): under the daemon's set-up (the template's copy) and under any
    other (``makeRecord``), every attribute of the record is the one ``makeRecord``
    gives for ``log_task_end``'s place; the time is now's."""
    if daemon:
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    log = logging.getLogger("llama_orch.orchestratord")
    code = log_task_end.__code__
    fields = _task_fields()
    before = time.time()
    got = task_end_record(fields)
    after = time.time()
    want = log.makeRecord(
        log.name, logging.INFO, code.co_filename, code.co_firstlineno,
        "task ended", (), None, code.co_name, fields,
    )  # fmt: skip
    assert type(got) is logging.LogRecord
    assert list(got.__dict__) == list(want.__dict__)  # same attributes, same order
    assert {k: v for k, v in got.__dict__.items() if k not in _TIMES} == {
        k: v for k, v in want.__dict__.items() if k not in _TIMES
    }
    assert got.funcName == "log_task_end" and got.filename == "telemetry.py"
    assert got.module == "telemetry" and got.levelname == "INFO"
    assert (got.thread is None) is daemon and (got.process is None) is daemon
    assert before <= got.created <= after
    assert got.msecs == int((got.created - int(got.created)) * 1000) + 0.0
    rel_now = want.relativeCreated - (want.created - got.created) * 1000
    assert abs(got.relativeCreated - rel_now) < 1e-3  # ms; only the float rounding differs


def test_a_second_record_is_a_new_one(flags: None) -> None:
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    one, two = task_end_record({"job_id": "a"}), task_end_record({"job_id": "b"})
    assert one is not two and (one.job_id, two.job_id) == ("a", "b")  # type: ignore[attr-defined]


def _rec_pool() -> tuple[SimpleNamespace, SimpleNamespace]:
    rec = SimpleNamespace(
        task_id="t-1", session_id=None, tenant="acme", correlation_id="c-1", api="native",
        engine="llamacpp", engine_version="b1", pool_id="p0", replica_id="r0",
        kv_warmth="cold", priority="interactive", state="failed", created=100.0,
        dispatched=100.25, finished_at=101.5, first_token=100.5, prompt_tokens=12,
        tokens_out=3, queue_position=2, predicted_start_ms=1.5,
        error_code=ErrorCode.ADMISSION_REJECT,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",  # a traced task (ORCH-7045)
    )  # fmt: skip
    pool = SimpleNamespace(
        states={"r0": SimpleNamespace(model_ref="m", ctx=4096)},
        config=SimpleNamespace(model="m", ctx=2048),
    )
    return rec, pool


def test_log_task_end_reaches_caplog_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    """The record still goes through the logger: pytest's handler sees it, whole."""
    caplog.set_level(logging.INFO, logger="llama_orch.orchestratord")
    rec, pool = _rec_pool()
    log_task_end(rec, pool)  # type: ignore[arg-type]
    (record,) = [r for r in caplog.records if r.getMessage() == "task ended"]
    got = {k: record.__dict__[k] for k in TASK_LOG_FIELDS}
    assert got["job_id"] == "t-1" and got["error_code"] == "ADMISSION_REJECT"
    assert got["queue_time_ms"] == 250 and got["decode_time_ms"] == 1000 and got["ctx"] == 4096
    assert record.funcName == "log_task_end"


def test_nothing_is_built_when_info_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "task_end_record", None)  # would raise if called
    log = logging.getLogger("llama_orch.orchestratord")
    monkeypatch.setattr(log, "level", logging.WARNING)
    log_task_end(*_rec_pool())  # type: ignore[arg-type]


class _Stream:
    def __init__(self, line_buffering: bool) -> None:
        self.line_buffering = line_buffering
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, s: str) -> int:
        self.writes.append(s)
        return len(s)

    def flush(self) -> None:
        self.flushes += 1


@pytest.mark.parametrize("line_buffering", [True, False])
def test_the_handler_writes_each_line_whole_once(line_buffering: bool) -> None:
    """ORCH-2804 (d): one write of the line and its newline; a flush only for a stream
    that does not flush at a line's end."""
    stream = _Stream(line_buffering)
    handler = main.LineHandler(stream)  # type: ignore[call-overload]  # a TextIO's two methods
    handler.setFormatter(main.JsonFormatter())
    for _ in range(3):
        handler.handle(task_end_record({"job_id": "t-1"}))
    assert len(stream.writes) == 3
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in stream.writes)
    assert stream.flushes == (0 if line_buffering else 3)


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize("to", ["pipe", "file"])
def test_stderr_flushes_at_a_lines_end(to: str, unbuffered: bool, tmp_path: Path) -> None:
    """The premise of (d): the interpreter's stderr hands a line to the OS in its write
    (line buffered since Python 3.9; write-through to the raw file under ``-u``), to a
    pipe and to a file (the daemon's stderr under a supervisor)."""
    code = (
        "import sys; from llama_orch.orchestratord.main import flushes_at_line_end; "
        "print(flushes_at_line_end(sys.stderr))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    err: int | IO[bytes] = subprocess.PIPE
    with contextlib.ExitStack() as stack:
        if to == "file":
            err = stack.enter_context((tmp_path / "err").open("wb"))
        out = subprocess.run(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, env=env, check=True
        )
    assert out.stdout.strip() == b"True"


def test_a_buffered_write_through_stream_is_flushed(tmp_path: Path) -> None:
    """Write-through to a buffered binary stream leaves the bytes in that buffer: flush."""
    with io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(tmp_path / "f", "w")), write_through=True
    ) as text:
        assert not main.flushes_at_line_end(text)
    assert not main.flushes_at_line_end(_Stream(False))
    assert main.flushes_at_line_end(_Stream(True))
