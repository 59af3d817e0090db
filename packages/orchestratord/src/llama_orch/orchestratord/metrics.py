"""Prometheus metrics through the OpenTelemetry SDK (ORCH-1501..ORCH-1503).

Names and labels follow ARCHITECTURE §8 and ``ci/metrics.lint.yaml``.
Each :class:`Metrics` owns its own Prometheus registry so that several
orchestrators (tests) never share counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, generate_latest

__all__ = ["Metrics"]

Attrs = dict[str, str]
_LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


class Metrics:
    def __init__(
        self,
        *,
        queue_depths: Callable[[], Iterable[tuple[int, Attrs]]],
        shares: Callable[[], Iterable[tuple[float, Attrs]]] = list,
        deadlines_met: Callable[[], Iterable[tuple[float, Attrs]]] = list,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(disable_target_info=True, registry=self.registry)
        buckets = ExplicitBucketHistogramAggregation(boundaries=_LATENCY_BUCKETS_MS)
        self._provider = MeterProvider(
            metric_readers=[reader],
            views=[
                View(instrument_name="latency_first_token_ms", aggregation=buckets),
                View(instrument_name="latency_decode_ms", aggregation=buckets),
            ],
        )
        meter = self._provider.get_meter("llama_orch.orchestratord")
        self.tasks_enqueued = meter.create_counter(
            "tasks_enqueued_total", description="Tasks accepted into a queue (202)."
        )
        self.tasks_started = meter.create_counter(
            "tasks_started_total", description="Tasks dispatched to an engine replica."
        )
        self.tasks_canceled = meter.create_counter(
            "tasks_canceled_total", description="Tasks ended by an explicit cancel."
        )
        self.tasks_rejected = meter.create_counter(
            "tasks_rejected_total", description="Submissions refused at admission, by reason."
        )
        self.tokens_in = meter.create_counter(
            "tokens_in_total", description="Prompt tokens of dispatched tasks."
        )
        self.tokens_out = meter.create_counter(
            "tokens_out_total", description="Token events streamed to clients."
        )
        self.backpressure = meter.create_counter(
            "admission_backpressure_events_total",
            description="Full-queue policy decisions (rejections and displacements).",
        )
        self.first_token_ms = meter.create_histogram(
            "latency_first_token_ms", description="Dispatch to first token, milliseconds."
        )
        self.decode_ms = meter.create_histogram(
            "latency_decode_ms", description="First token to end of decode, milliseconds."
        )

        self.preemptions = meter.create_counter(
            "preemptions_total", description="Tasks preempted, by mode (soft | hard)."
        )
        self.resumptions = meter.create_counter(
            "resumptions_total", description="Preempted tasks resumed on an engine."
        )

        def observe_shares(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, attrs) for v, attrs in shares()]

        def observe_deadlines(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, attrs) for v, attrs in deadlines_met()]

        meter.create_observable_gauge(
            "admission_share",
            callbacks=[observe_shares],
            description="EWMA share of dispatches per tenant and priority (ORCH-1113).",
        )
        meter.create_observable_gauge(
            "deadlines_met_ratio",
            callbacks=[observe_deadlines],
            description="Finished tasks with a deadline that met it, per priority (ORCH-1112).",
        )

        def observe_depth(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, attrs) for v, attrs in queue_depths()]

        meter.create_observable_gauge(
            "queue_depth", callbacks=[observe_depth], description="Queued tasks per pool."
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self._provider.shutdown()
