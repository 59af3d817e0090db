"""Prometheus metrics through the OpenTelemetry SDK (ORCH-1501..ORCH-1505, ORCH-7001..ORCH-7008).

Names, types and labels are the contract of ARCHITECTURE §8, listed in
``ci/metrics.lint.json`` and documented in ``.specs/metrics/``. Each
:class:`Metrics` owns its own Prometheus registry so that several
orchestrators (tests) never share counters. Instruments carry no OTel
``unit``: the Prometheus exporter would append a unit suffix and break the
contract names; units are stated in the lint file and the descriptions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from prometheus_client import CollectorRegistry, generate_latest

__all__ = ["Attrs", "BatchedCounter", "BatchedHistogram", "Metrics", "Samples"]

Attrs = dict[str, str]
Samples = Callable[[], Iterable[tuple[float, Attrs]]]
# Policy decisions take ~0.1 ms; a trap stops at the hook's budget (ORCH-8542).
_POLICY_BUCKETS_MS = (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 25, 100, 1000)
# One store call: ~0.1 ms in memory, ~0.3-2 ms over loopback to Valkey (ORCH-2531).
_STORE_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)
_LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


def _none() -> list[tuple[float, Attrs]]:
    return []


_Key = tuple[tuple[str, str], ...]
# values a histogram holds before it folds them without waiting for a scrape
FOLD_EVERY = 4096


class BatchedCounter:
    """A counter whose increments are summed per attribute set in the process and
    added to the OpenTelemetry counter when the metrics are rendered (ORCH-2768): a
    request pays a dictionary update, not the SDK's per-call path."""

    __slots__ = ("_counter", "_pending")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._pending: dict[_Key, int | float] = {}

    def add(self, amount: int | float, attributes: Mapping[str, str] | None = None) -> None:
        key = tuple(attributes.items()) if attributes else ()
        pending = self._pending
        pending[key] = pending.get(key, 0) + amount

    def fold(self) -> None:
        pending, self._pending = self._pending, {}
        for key, amount in pending.items():
            self._counter.add(amount, dict(key))


class BatchedHistogram:
    """A histogram whose values are kept per attribute set in the process and
    recorded into the OpenTelemetry histogram when the metrics are rendered, or once
    ``fold_every`` of them are held (ORCH-2768)."""

    __slots__ = ("_fold_every", "_held", "_histogram", "_pending", "_sets")

    def __init__(self, histogram: Histogram, fold_every: int = FOLD_EVERY) -> None:
        self._histogram = histogram
        # the attributes as given (their order) -> the one list of their set's values,
        # so that one attribute set written in two orders keeps its values in record
        # order: the SDK's sum is then the direct records' to the bit (ORCH-2768)
        self._pending: dict[_Key, list[int | float]] = {}
        self._sets: dict[_Key, list[int | float]] = {}  # sorted attributes -> values
        self._held = 0
        self._fold_every = fold_every

    def record(self, amount: int | float, attributes: Mapping[str, str] | None = None) -> None:
        key = tuple(attributes.items()) if attributes else ()
        values = self._pending.get(key)
        if values is None:
            values = self._sets.setdefault(tuple(sorted(key)), [])
            self._pending[key] = values
        values.append(amount)
        self._held += 1
        if self._held >= self._fold_every:
            self.fold()

    def fold(self) -> None:
        sets, self._sets, self._pending, self._held = self._sets, {}, {}, 0
        for key, values in sets.items():
            attrs = dict(key)
            for v in values:
                self._histogram.record(v, attrs)


class Metrics:
    """Every instrument of the contract. Gauges read their values at scrape time."""

    def __init__(
        self,
        *,
        queue_depths: Samples,
        shares: Samples = _none,
        deadlines_met: Samples = _none,
        kv_usage: Samples = _none,
        model_states: Samples = _none,
        gpu_utilization: Samples = _none,
        vram_used: Samples = _none,
        prefix_hits: Samples = _none,
        fold_every: int = FOLD_EVERY,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reader = PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=self.registry
        )
        buckets = ExplicitBucketHistogramAggregation(boundaries=_LATENCY_BUCKETS_MS)
        self._provider = MeterProvider(
            metric_readers=[reader],
            views=[
                View(instrument_name="latency_first_token_ms", aggregation=buckets),
                View(instrument_name="latency_decode_ms", aggregation=buckets),
                View(instrument_name="catalog_latency_first_token_ms", aggregation=buckets),
                View(
                    instrument_name="state_store_op_ms",
                    aggregation=ExplicitBucketHistogramAggregation(boundaries=_STORE_BUCKETS_MS),
                ),
                View(
                    instrument_name="policy_decision_ms",
                    aggregation=ExplicitBucketHistogramAggregation(boundaries=_POLICY_BUCKETS_MS),
                ),
            ],
        )
        meter = self._provider.get_meter("llama_orch.orchestratord")
        # the instruments a request records into are batched (ORCH-2768)
        self._batched: list[BatchedCounter | BatchedHistogram] = []

        def counter(name: str, description: str) -> BatchedCounter:
            c = BatchedCounter(meter.create_counter(name, description=description))
            self._batched.append(c)
            return c

        def histogram(name: str, description: str) -> BatchedHistogram:
            otel = meter.create_histogram(name, description=description)
            self._batched.append(h := BatchedHistogram(otel, fold_every))
            return h

        # -- admission counters: engine, pool_id (+ priority | reason/policy), and the
        # API the task came through for enqueued/rejected (ORCH-9220)
        self.tasks_enqueued = counter(
            "tasks_enqueued_total", description="Tasks accepted into a queue (202)."
        )
        self.tasks_canceled = counter(
            "tasks_canceled_total", description="Tasks ended by an explicit cancel."
        )
        self.tasks_rejected = counter(
            "tasks_rejected_total",
            description="Submissions refused at admission or displaced from a queue, by reason.",
        )
        self.tasks_expired = counter(
            "tasks_expired_total",
            description="Queued tasks ended by a bounded wait, by reason (ORCH-1966).",
        )
        self.embeddings = counter(
            "embeddings_total",
            description="Embedding requests served by an engine (ORCH-9212).",
        )
        self.backpressure = counter(
            "admission_backpressure_events_total",
            description="Full-queue and quota policy decisions (429s and displacements).",
        )
        # -- model catalog (ORCH-3314, ORCH-3331)
        self.catalog_verifications = counter(
            "catalog_verifications_total",
            description="Trust verifications of models at register, verify and load.",
        )
        self.catalog_routed = counter(
            "catalog_routed_total",
            description="Tasks routed to a catalog model version (active or canary).",
        )
        # per version of what ran (ORCH-3380): model_id, lifecycle (+ outcome)
        self.catalog_tasks = counter(
            "catalog_tasks_total",
            description="Tasks that ran on a catalog model version, by outcome (ORCH-3380).",
        )
        self.catalog_first_token_ms = histogram(
            "catalog_latency_first_token_ms",
            description="Dispatch to first token per catalog model version (milliseconds).",
        )
        self.catalog_tokens_out = counter(
            "catalog_tokens_out_total",
            description="Tokens streamed per catalog model version (tokens).",
        )
        # -- per-replica counters and histograms: engine, engine_version, pool_id, replica_id
        self.tasks_started = counter(
            "tasks_started_total", description="Tasks dispatched to an engine replica."
        )
        self.tokens_in = counter(
            "tokens_in_total", description="Prompt tokens of dispatched tasks (tokens)."
        )
        self.tokens_out = counter(
            "tokens_out_total", description="Tokens streamed to clients (tokens)."
        )
        self.first_token_ms = histogram(
            "latency_first_token_ms", description="Dispatch to first token (milliseconds)."
        )
        self.decode_ms = histogram(
            "latency_decode_ms", description="First token to end of decode (milliseconds)."
        )
        self.preemptions = counter(
            "preemptions_total", description="Tasks preempted, by mode (soft | hard)."
        )
        self.resumptions = counter(
            "resumptions_total", description="Preempted tasks resumed on an engine."
        )
        # -- placement and migration (ORCH-2320, ORCH-2336): engine, pool_id, ...
        self.placement_decisions = counter(
            "placement_decisions_total",
            description="Dispatches by placement policy and the rule that decided.",
        )
        self.migrations = counter(
            "migrations_total",
            description="Running tasks moved to another replica after theirs failed, by outcome.",
        )
        # -- policies (ORCH-8542): policy, hook, outcome | code
        self.policy_calls = counter(
            "policy_calls_total", description="Policy calls by policy, hook and outcome."
        )
        self.policy_decision_ms = histogram(
            "policy_decision_ms", description="Time of one policy decision (milliseconds)."
        )
        # -- the shared state store (ORCH-2531, issue #13)
        self.store_op_ms = histogram(
            "state_store_op_ms", description="Time of one state-store call, by op (milliseconds)."
        )
        self.store_writes_refused = counter(
            "state_store_appends_refused_total",
            description="Event writes the store refused: fenced (taken over) or ended (canceled).",
        )
        self.store_leases_lost = counter(
            "state_store_leases_lost_total",
            description="Leases this instance lost (taken over, ended, or store unreachable).",
        )
        self.store_takeovers = counter(
            "state_store_takeovers_total",
            description="Expired leases this instance reaped, by outcome.",
        )
        self.policy_traps = counter(
            "policy_traps_total", description="Failed policy calls by policy and failure code."
        )
        # -- refusals of the security layer (ORCH-8017..8019): counted on refusal paths only
        self.auth_refused = counter(
            "auth_refused_total",
            description="Requests refused by authentication (401) or by role (403) (ORCH-8017).",
        )
        self.streams_cut = counter(
            "streams_cut_total",
            description="Task streams cut because their client read nothing (ORCH-8018).",
        )
        self.streams_refused = counter(
            "streams_refused_total",
            description="Task streams refused at the per-tenant stream limit (ORCH-8019).",
        )

        def gauge(name: str, samples: Samples, description: str) -> None:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(v, attrs) for v, attrs in samples()]

            meter.create_observable_gauge(name, callbacks=[observe], description=description)

        # a component that owns its samples registers its gauge itself (the catalog)
        self.gauge = gauge
        gauge("queue_depth", queue_depths, "Queued tasks per pool and priority (tasks).")
        gauge(
            "admission_share",
            shares,
            "EWMA share of dispatches per tenant and priority (ratio, ORCH-1113).",
        )
        gauge(
            "deadlines_met_ratio",
            deadlines_met,
            "Finished tasks with a deadline that met it, per pool and priority (ratio).",
        )
        gauge(
            "kv_cache_usage_ratio",
            kv_usage,
            "KV cache in use per replica, from the engine's own scrape (ratio).",
        )
        gauge(
            "model_state",
            model_states,
            "1 for the replica's current state, 0 for the others (one-hot by state).",
        )
        gauge(
            "prefix_hit_ratio",
            prefix_hits,
            "Prompt tokens served from the engine's prefix cache over those looked up,"
            " per replica, from the engine's own counters (ratio, ORCH-2322).",
        )
        gauge("gpu_utilization", gpu_utilization, "NVML GPU utilization per device (ratio).")
        gauge("vram_used_bytes", vram_used, "NVML memory in use per device (bytes).")

    def fold(self) -> None:
        """Hand every held record to the OpenTelemetry instruments (ORCH-2768)."""
        for instrument in self._batched:
            instrument.fold()

    def render(self) -> bytes:
        self.fold()
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self._provider.shutdown()
