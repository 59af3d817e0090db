"""ORCH-2822: the task-end line written from its fields by the daemon's handler when
that handler is the only one to see it; any other logging set-up gets the record.

The line must be the one the record would give (``JsonFormatter`` on the record that
``Logger.handle`` passes the daemon's handler after its ``CorrelationFilter``), for any
field values; a handler or filter anybody adds must make the record go through the
logger again.
"""

from __future__ import annotations

import io
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.orchestratord import logline, main, telemetry
from llama_orch.orchestratord.telemetry import TASK_LOG_FIELDS, log_task_end, task_end_record
from llama_orch.orchestratord.tracing import CORRELATION_ID, INSTANCE_ID, CorrelationFilter

from .test_log_line import _rec_pool, _record_fields

LOG = logging.getLogger("llama_orch.orchestratord")


@pytest.fixture
def daemon(daemon_logging: io.StringIO) -> io.StringIO:
    """The daemon's logging, writing to a buffer (``conftest.daemon_logging``). pytest adds
    its own handlers to the root for a test's call: each test takes them off first
    (:func:`_alone`), as the daemon has none."""
    return daemon_logging


def _handler() -> logline.LineHandler:
    (handler,) = logging.getLogger().handlers
    assert type(handler) is logline.LineHandler
    return handler


def _alone() -> logline.LineHandler:
    """The daemon's handler, left alone on the root (pytest's taken off for the test)."""
    root = logging.getLogger()
    (handler,) = [h for h in root.handlers if type(h) is logline.LineHandler]
    root.handlers[:] = [handler]
    return handler


def _via_record(fields: dict[str, object], created: float) -> str:
    """The line the stdlib's path writes: the record, the daemon's filter, its formatter."""
    record = task_end_record(dict(fields))
    record.created = created
    assert CorrelationFilter().filter(record)
    return main.JsonFormatter().format(record)


@settings(max_examples=300, deadline=None)
@given(
    fields=_record_fields,
    created=st.floats(min_value=0, max_value=4e9),
    cid=st.none() | st.text(max_size=8),
    iid=st.none() | st.text(max_size=8),
)
def test_the_direct_line_is_the_records_line(
    fields: dict[str, object], created: float, cid: str | None, iid: str | None
) -> None:
    """Byte for byte, for any values of any of the line's fields, with and without a
    request's correlation ID and an instance ID in the context (the filter's part)."""
    out = io.StringIO()
    handler = logline.LineHandler(out)
    handler.setFormatter(main.JsonFormatter())
    handler.addFilter(CorrelationFilter())
    c_token, i_token = CORRELATION_ID.set(cid), INSTANCE_ID.set(iid)
    try:
        want = _via_record(fields, created)
        handler.write_fields(created, LOG.name, "task ended", dict(fields))
    finally:
        CORRELATION_ID.reset(c_token)
        INSTANCE_ID.reset(i_token)
    assert out.getvalue() == want + "\n"


def test_the_daemons_set_up_writes_without_a_record(
    daemon: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``configure_logging`` the line is written and no record is made or handled."""
    _alone()
    monkeypatch.setattr(telemetry, "task_end_record", None)  # would raise if called
    monkeypatch.setattr(LOG, "handle", None)
    rec, pool = _rec_pool()
    log_task_end(rec, pool)  # type: ignore[arg-type]
    (line,) = daemon.getvalue().splitlines()
    assert line.startswith('{"ts": ') and '"msg": "task ended", "job_id": "t-1"' in line


def test_the_direct_line_equals_the_logged_line_through_log_task_end(
    daemon: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same task logged both ways (the direct path, then the record's path forced
    by a no-op logger filter) gives the same line but for the time."""
    _alone()
    rec, pool = _rec_pool()
    token = INSTANCE_ID.set("inst-1")
    try:
        log_task_end(rec, pool)  # type: ignore[arg-type]
        keep = logging.Filter()  # passes everything
        LOG.addFilter(keep)
        try:
            assert logline.direct_handler(LOG) is None
            log_task_end(rec, pool)  # type: ignore[arg-type]
        finally:
            LOG.removeFilter(keep)
    finally:
        INSTANCE_ID.reset(token)
    direct, stdlib = daemon.getvalue().splitlines()
    assert direct.partition(",")[2] == stdlib.partition(",")[2]
    assert direct.endswith('"instance_id": "inst-1"}')


def test_the_daemons_handler_alone_is_direct(daemon: io.StringIO) -> None:
    _alone()
    assert logline.direct_handler(LOG) is _handler()


def test_caplog_and_the_daemons_handler_both_get_it(
    daemon: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    """A second handler (pytest's ``caplog``, on the root): the record goes through the
    logger, both handlers get it, the daemon's line is written once."""
    _alone()
    logging.getLogger().addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger=LOG.name)
    assert logline.direct_handler(LOG) is None
    log_task_end(*_rec_pool())  # type: ignore[arg-type]
    (record,) = [r for r in caplog.records if r.getMessage() == "task ended"]
    assert {k: record.__dict__[k] for k in TASK_LOG_FIELDS}["job_id"] == "t-1"
    assert len(daemon.getvalue().splitlines()) == 1


class _Sink(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


class _Keep(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen.append(record)
        return True


@pytest.mark.parametrize(
    "where", ["logger filter", "handler filter", "handler on logger", "handler on parent"]
)
def test_anything_added_gets_the_record(daemon: io.StringIO, where: str) -> None:
    """A filter on the logger or the daemon's handler, or another handler anywhere on
    the record's way: the record is made and reaches it (and the line is written)."""
    _alone()
    keep = _Keep()
    sink = _Sink()
    sink.addFilter(keep)
    parent = logging.getLogger("llama_orch")
    added: list[tuple[logging.Filterer, logging.Filter | logging.Handler]] = []
    if where == "logger filter":
        added.append((LOG, keep))
    elif where == "handler filter":
        added.append((_handler(), keep))
    elif where == "handler on logger":
        added.append((LOG, sink))
    else:
        added.append((parent, sink))
    for owner, thing in added:
        if isinstance(thing, logging.Handler):
            assert isinstance(owner, logging.Logger)
            owner.addHandler(thing)
        else:
            owner.addFilter(thing)
    try:
        assert logline.direct_handler(LOG) is None
        log_task_end(*_rec_pool())  # type: ignore[arg-type]
    finally:
        for owner, thing in added:
            if isinstance(thing, logging.Handler):
                assert isinstance(owner, logging.Logger)
                owner.removeHandler(thing)
            else:
                owner.removeFilter(thing)
    (record,) = keep.seen
    assert record.job_id == "t-1"  # type: ignore[attr-defined]
    assert len(daemon.getvalue().splitlines()) == 1


def test_a_handler_above_info_does_not_count(daemon: io.StringIO) -> None:
    """A handler that an INFO record skips (``Logger.callHandlers``' level test) leaves
    the daemon's handler the only one: still direct."""
    _alone()
    quiet = _Sink(logging.WARNING)
    LOG.addHandler(quiet)
    try:
        assert logline.direct_handler(LOG) is _handler()
    finally:
        LOG.removeHandler(quiet)


def test_another_formatter_a_subclass_or_no_propagation_is_not_direct(
    daemon: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    _alone()
    handler = _handler()
    monkeypatch.setattr(handler, "formatter", logging.Formatter())
    assert logline.direct_handler(LOG) is None
    monkeypatch.undo()
    monkeypatch.setattr(main.sys, "stderr", daemon)
    assert logline.direct_handler(LOG) is handler

    class Mine(logline.LineHandler):
        pass

    logging.getLogger().handlers[:] = [Mine(daemon)]
    logging.getLogger().handlers[0].setFormatter(main.JsonFormatter())
    logging.getLogger().handlers[0].addFilter(CorrelationFilter())
    assert logline.direct_handler(LOG) is None
    logging.getLogger().handlers[:] = [handler]
    monkeypatch.setattr(LOG, "propagate", False)
    assert logline.direct_handler(LOG) is None  # no handler reached: the stdlib's lastResort
    monkeypatch.setattr(LOG, "propagate", True)
    monkeypatch.setattr(LOG, "disabled", True)
    assert logline.direct_handler(LOG) is None
