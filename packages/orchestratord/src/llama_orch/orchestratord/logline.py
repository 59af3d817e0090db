"""The daemon's JSON log lines (ORCH-1504, ORCH-7030, ORCH-2804, ORCH-2822).

:class:`JsonFormatter` renders a record as one JSON object; :class:`LineHandler` writes
it with one ``write`` per line. ORCH-2822: the one ``task ended`` line per task can be
handed to the handler as its fields (:meth:`LineHandler.write_fields`), without a
``LogRecord`` and the logger's dispatch, when :func:`direct_handler` finds that this
handler is the only one the record would reach and that nothing else would see it
(no logger filter, a handler filter that is the daemon's own). The line is the same
text: both ways render it with :func:`render`.
"""

from __future__ import annotations

import io
import json
import json.encoder
import logging
from collections.abc import Mapping
from typing import TextIO

from .tracing import CORRELATION_ID, INSTANCE_ID, CorrelationFilter

__all__ = [
    "TASK_LOG_FIELDS",
    "JsonFormatter",
    "LineHandler",
    "direct_handler",
    "flushes_at_line_end",
    "render",
]

# The fields of the one ``task ended`` log line (ORCH-7030); JsonFormatter emits them.
TASK_LOG_FIELDS = (
    "job_id",
    "session_id",
    "tenant",
    "correlation_id",
    "api",
    "engine",
    "engine_version",
    "pool_id",
    "replica_id",
    "model_id",
    "ctx",
    "kv_warmth",
    "priority",
    "state",
    "queue_time_ms",
    "decode_time_ms",
    "tokens_in",
    "tokens_out",
    "queue_position",
    "predicted_start_ms",
    "error_code",
)

# check/ok/detail: self-tests; model..reason: catalog verifications (ORCH-3314)
FIELDS = (
    *TASK_LOG_FIELDS,
    "trace_id",  # ORCH-7045: on the ``task ended`` line when the task had a recording trace
    "check",
    "ok",
    "detail",
    "model",
    "digest",
    "stage",
    "result",
    "reason",
    "instance_id",  # with a state store (ORCH-2544)
)


# One encoder for every line: json.dumps(out, default=str) builds a new JSONEncoder per
# call, a third of the per-task log line's cost (issue #20). Same output.
_encode = json.JSONEncoder(default=str).encode
_quote = json.encoder.encode_basestring_ascii  # the encoder's own string text (ensure_ascii)
# ORCH-2804: each field's key text, as the encoder writes it after the previous value.
_HEADS = tuple((key, f", {_quote(key)}: ") for key in FIELDS)


def _value(value: object) -> str:
    """``value``'s text in the line: exactly what ``_encode`` writes for it inside an
    object (a string, None, an int and a finite float directly, as the encoder does;
    anything else by ``_encode`` itself)."""
    if isinstance(value, str):
        return _quote(value)
    if value is None:
        return "null"
    if type(value) is int:  # not bool, not an enum: those are the encoder's
        return int.__repr__(value)
    if type(value) is float and value - value == 0.0:  # finite; NaN/inf are the encoder's
        return float.__repr__(value)
    return _encode(value)


def render(
    created: float, level: str, name: str, msg: str, attrs: Mapping[str, object], exc: str | None
) -> str:
    """The line: ``ts``, ``level``, ``logger``, ``msg``, the fields of ``FIELDS`` that
    ``attrs`` holds (in that order), ``exc``. ORCH-2804: the text ``_encode`` gives for
    that dictionary, written without the dictionary."""
    parts = [
        f'{{"ts": {_value(round(created, 3))}, "level": {_value(level)}, '
        f'"logger": {_value(name)}, "msg": {_value(msg)}'
    ]
    for key, head in _HEADS:
        if key in attrs:
            parts.append(head + _value(attrs[key]))
    if exc is not None:
        parts.append(', "exc": ' + _value(exc))
    parts.append("}")
    return "".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (:func:`render`)."""

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return render(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            record.__dict__,
            exc,
        )


def flushes_at_line_end(stream: object) -> bool:
    """Whether ``stream`` hands a written line to the OS within the ``write``: a text
    stream with line buffering (``sys.stderr`` since Python 3.9), or writing through to
    an unbuffered raw file (``sys.stderr`` under ``-u``/``PYTHONUNBUFFERED``)."""
    if getattr(stream, "line_buffering", False):
        return True
    return bool(getattr(stream, "write_through", False)) and isinstance(
        getattr(stream, "buffer", None), io.RawIOBase
    )


class LineHandler(logging.StreamHandler[TextIO]):
    """ORCH-2804: one ``write`` of the whole line and its newline per record (as
    ``StreamHandler``), and no second flush of a stream that flushed in that write."""

    _checked: tuple[object, bool] = (None, False)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._write(self.format(record))
        except RecursionError:  # as StreamHandler.emit
            raise
        except Exception:
            self.handleError(record)

    def _write(self, line: str) -> None:
        stream = self.stream
        stream.write(line + "\n")
        checked, flushed = self._checked
        if checked is not stream:
            flushed = flushes_at_line_end(stream)
            self._checked = (stream, flushed)
        if not flushed:
            stream.flush()

    def takes_fields(self) -> bool:
        """Whether a record given to this handler would come out as :meth:`write_fields`
        writes it: the daemon's formatter, and the daemon's filter only (ORCH-2822)."""
        filters = self.filters
        return (
            type(self.formatter) is JsonFormatter
            and len(filters) == 1
            and type(filters[0]) is CorrelationFilter
        )

    def write_fields(self, created: float, name: str, msg: str, fields: dict[str, object]) -> None:
        """The INFO line of a record with ``fields`` as its extra attributes, created at
        ``created`` by the logger ``name`` (ORCH-2822): what :class:`CorrelationFilter`
        adds, then the line, written under the handler's lock as ``Handler.handle``."""
        if "instance_id" not in fields:
            iid = INSTANCE_ID.get()
            if iid is not None:
                fields["instance_id"] = iid
        if "correlation_id" not in fields:
            cid = CORRELATION_ID.get()
            if cid is not None:
                fields["correlation_id"] = cid
        level = logging.getLevelName(logging.INFO).lower()
        try:
            line = render(created, level, name, msg, fields, None)
            with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
                self._write(line)
        except RecursionError:
            raise
        except Exception:
            self.handleError(logging.makeLogRecord({"name": name, "msg": msg, **fields}))


def direct_handler(logger: logging.Logger) -> LineHandler | None:
    """The daemon's :class:`LineHandler` when it is the only handler an INFO record of
    ``logger`` would reach and takes the fields (:meth:`LineHandler.takes_fields`), with
    no filter on ``logger`` (ORCH-2822); otherwise None: the record goes through
    ``Logger.handle``. The caller has checked ``logger.isEnabledFor(INFO)``."""
    if logger.filters or logger.disabled:
        return None
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if handler.level <= logging.INFO:  # Logger.callHandlers' own test
                if found is not None:
                    return None
                found = handler
        current = current.parent if current.propagate else None
    if type(found) is LineHandler and found.takes_fields():
        return found
    return None
