"""Task traces and the request's correlation ID (ORCH-7031, ORCH-7040..ORCH-7042).

Each task is one trace: a root span ``task`` with the children ``admission``,
``queue``, ``dispatch``, ``engine.request`` and ``stream.end``, every span
carrying ``llama_orch.task_id`` and ``llama_orch.correlation_id`` (the
``X-Correlation-Id`` of the submission). Spans are built with the
OpenTelemetry SDK on a per-orchestrator provider; nothing is exported unless
``observability.otlp_traces_endpoint`` is set (OTLP over HTTP, needs the
``otlp`` extra) or a test adds its own span processor.

W3C Trace Context (ORCH-7043..ORCH-7045): with tracing on, a submission's
``traceparent`` / ``tracestate`` make ``task`` a child of the client's span; a run's
engine requests carry the ``engine.request`` span's context; the ``task ended`` log
line names the trace. With tracing off no header is read and none is sent.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .errors import StartupError
from .tasks import TaskRecord

__all__ = [
    "CORRELATION_ID",
    "INSTANCE_ID",
    "TRACE_CARRIER",
    "CorrelationFilter",
    "Tracing",
    "trace_carrier",
]

# Set by the HTTP middleware for the duration of one request.
CORRELATION_ID: ContextVar[str | None] = ContextVar("llama_orch_correlation_id", default=None)
# Set by ``serve`` for everything an instance on a state store runs (ORCH-2544).
INSTANCE_ID: ContextVar[str | None] = ContextVar("llama_orch_instance_id", default=None)
# ORCH-7043: the request's ``traceparent`` / ``tracestate``, set by the HTTP middleware
# only while tracing is on.
TRACE_CARRIER: ContextVar[dict[str, str] | None] = ContextVar(
    "llama_orch_trace_carrier", default=None
)
# The W3C Trace Context level 1 codec of the OpenTelemetry API (ORCH-7043, ORCH-7044).
_W3C = TraceContextTextMapPropagator()


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id`` to every record logged while a request is handled, and
    ``instance_id`` to every record of an instance on a state store (ORCH-2544)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "instance_id" not in record.__dict__:
            iid = INSTANCE_ID.get()
            if iid is not None:
                record.instance_id = iid
        if "correlation_id" not in record.__dict__:
            cid = CORRELATION_ID.get()
            if cid is not None:
                record.correlation_id = cid
        return True


def trace_carrier(headers: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The request's ``traceparent`` and ``tracestate`` (several ``tracestate`` fields
    joined with "," as RFC 9110 combines them); None without a ``traceparent``."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name == b"traceparent":
            carrier.setdefault("traceparent", value.decode("latin-1"))
        elif name == b"tracestate":
            prev = carrier.get("tracestate")
            text = value.decode("latin-1")
            carrier["tracestate"] = text if prev is None else f"{prev},{text}"
    return carrier if "traceparent" in carrier else None


class _TaskSpans:
    __slots__ = ("ctx", "engine", "queue", "root")

    def __init__(self, root: Span) -> None:
        self.root = root
        self.ctx = trace.set_span_in_context(root)
        self.queue: Span | None = None
        self.engine: Span | None = None


class Tracing:
    def __init__(self, otlp_endpoint: str | None = None) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": "orchestratord"}))
        if otlp_endpoint:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError as exc:
                raise StartupError(
                    "observability.otlp_traces_endpoint needs the OTLP exporter: "
                    "pip install 'llama-orch-orchestratord[otlp]'"
                ) from exc
            self.add_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        self._tracer = self.provider.get_tracer("llama_orch.orchestratord")
        self._spans: dict[str, _TaskSpans] = {}
        self.instance_id: str | None = None  # set with a state store (ORCH-2544)
        # ORCH-2730: without an exporter or processor no span is built at all (the
        # five spans per task cost about 3 % of the relay's CPU, issue #20 profile).
        self.enabled = bool(otlp_endpoint)

    def add_processor(self, processor: SpanProcessor) -> None:
        self.provider.add_span_processor(processor)
        self.enabled = True

    def _attrs(self, rec: TaskRecord) -> dict[str, str]:
        return {
            "llama_orch.task_id": rec.task_id,
            "llama_orch.correlation_id": rec.correlation_id or "",
            "llama_orch.pool_id": rec.pool_id,
            "llama_orch.engine": rec.engine,
            "llama_orch.priority": rec.priority,
        } | ({"llama_orch.instance_id": self.instance_id} if self.instance_id else {})

    def admitted(self, rec: TaskRecord, submitted_ns: int) -> None:
        """Root and ``admission`` spans from the submission's arrival; ``queue`` opens."""
        if not self.enabled:
            return  # later calls find no spans for the task and return
        attrs = self._attrs(rec)
        spans = self._open(rec, attrs, submitted_ns)
        self._tracer.start_span(
            "admission", context=spans.ctx, start_time=submitted_ns, attributes=attrs
        ).end()
        spans.queue = self._tracer.start_span("queue", context=spans.ctx, attributes=attrs)
        self._spans[rec.task_id] = spans

    def _open(self, rec: TaskRecord, attrs: dict[str, str], start_ns: int | None) -> _TaskSpans:
        """The root span ``task``: a child of the client's span when the submission
        carried a valid ``traceparent`` (ORCH-7043), else a new trace (an invalid one
        extracts to an empty context, never the ambient context of the request)."""
        carrier = rec.trace_carrier
        parent = _W3C.extract(carrier) if carrier else None
        root = self._tracer.start_span(
            "task", context=parent, start_time=start_ns, attributes=attrs
        )
        if root.is_recording():  # ORCH-7045: the log line names the trace
            rec.trace_id = format_trace_id(root.get_span_context().trace_id)
        return _TaskSpans(root)

    def dispatched(self, rec: TaskRecord, replica_id: str, engine_version: str) -> None:
        spans = self._spans.get(rec.task_id)
        if spans is None:
            if not (self.enabled and rec.trace_carrier):
                return
            # ORCH-7046: admitted by another instance with the client's trace context:
            # its run here continues the client's trace
            spans = self._spans[rec.task_id] = self._open(rec, self._attrs(rec), None)
        if spans.queue is not None:
            spans.queue.end()
            spans.queue = None
        attrs = self._attrs(rec) | {
            "llama_orch.replica_id": replica_id,
            "llama_orch.engine_version": engine_version,
        }
        self._tracer.start_span("dispatch", context=spans.ctx, attributes=attrs).end()
        spans.engine = self._tracer.start_span(
            "engine.request", context=spans.ctx, attributes=attrs
        )

    def engine_headers(self, rec: TaskRecord) -> dict[str, str] | None:
        """ORCH-7044: ``traceparent`` (and ``tracestate``) naming the task's current
        ``engine.request`` span, for the requests of its run; None without one."""
        spans = self._spans.get(rec.task_id)
        if spans is None or spans.engine is None:
            return None
        carrier: dict[str, str] = {}
        _W3C.inject(carrier, context=trace.set_span_in_context(spans.engine))
        return carrier or None

    def forwarded(self) -> dict[str, str] | None:
        """ORCH-7047: the request's valid trace context as it came (re-encoded by the
        propagator, so that an invalid header is not passed on); None without one."""
        carrier = TRACE_CARRIER.get()
        if not carrier:
            return None
        out: dict[str, str] = {}
        _W3C.inject(out, context=_W3C.extract(carrier))
        return out or None

    def requeued(self, rec: TaskRecord, reason: str) -> None:
        spans = self._spans.get(rec.task_id)
        if spans is None:
            return
        if spans.engine is not None:
            spans.engine.set_status(Status(StatusCode.ERROR, reason))
            spans.engine.end()
            spans.engine = None
        spans.queue = self._tracer.start_span(
            "queue", context=spans.ctx, attributes=self._attrs(rec)
        )

    def ended(self, rec: TaskRecord) -> None:
        spans = self._spans.pop(rec.task_id, None)
        if spans is None:
            return
        failed = rec.state == "failed"
        for span in (spans.queue, spans.engine):
            if span is not None:
                if failed:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
        attrs = self._attrs(rec) | {
            "llama_orch.state": rec.state,
            "llama_orch.tokens_out": rec.tokens_out,
        }
        if rec.error_code is not None:  # ORCH-1967
            attrs["llama_orch.error_code"] = rec.error_code.value
            spans.root.set_attribute("llama_orch.error_code", rec.error_code.value)
        self._tracer.start_span("stream.end", context=spans.ctx, attributes=attrs).end()
        spans.root.set_attribute("llama_orch.state", rec.state)
        if failed:
            spans.root.set_status(Status(StatusCode.ERROR))
        spans.root.end()

    def shutdown(self) -> None:
        for task_id in list(self._spans):
            spans = self._spans.pop(task_id)
            spans.root.end()
        self.provider.shutdown()


def now_ns() -> int:
    return time.time_ns()
