"""Task traces and the request's correlation ID (ORCH-7031, ORCH-7040..ORCH-7042).

Each task is one trace: a root span ``task`` with the children ``admission``,
``queue``, ``dispatch``, ``engine.request`` and ``stream.end``, every span
carrying ``llama_orch.task_id`` and ``llama_orch.correlation_id`` (the
``X-Correlation-Id`` of the submission). Spans are built with the
OpenTelemetry SDK on a per-orchestrator provider; nothing is exported unless
``observability.otlp_traces_endpoint`` is set (OTLP over HTTP, needs the
``otlp`` extra) or a test adds its own span processor.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode

from .errors import StartupError
from .tasks import TaskRecord

__all__ = ["CORRELATION_ID", "INSTANCE_ID", "CorrelationFilter", "Tracing"]

# Set by the HTTP middleware for the duration of one request.
CORRELATION_ID: ContextVar[str | None] = ContextVar("llama_orch_correlation_id", default=None)
# Set by ``serve`` for everything an instance on a state store runs (ORCH-2544).
INSTANCE_ID: ContextVar[str | None] = ContextVar("llama_orch_instance_id", default=None)


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
        root = self._tracer.start_span("task", start_time=submitted_ns, attributes=attrs)
        spans = _TaskSpans(root)
        self._tracer.start_span(
            "admission", context=spans.ctx, start_time=submitted_ns, attributes=attrs
        ).end()
        spans.queue = self._tracer.start_span("queue", context=spans.ctx, attributes=attrs)
        self._spans[rec.task_id] = spans

    def dispatched(self, rec: TaskRecord, replica_id: str, engine_version: str) -> None:
        spans = self._spans.get(rec.task_id)
        if spans is None:
            return
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
