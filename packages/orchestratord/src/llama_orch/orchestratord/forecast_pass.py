"""One forecast pass over a pool's queue, and the wait of a tenant at its cap.

:class:`ForecastPass` is the waiting loop's pass (ORCH-1961, ORCH-2742, ORCH-2906,
ORCH-2907, ORCH-2922): the queued tasks one at a time in serving order, then the
running tasks' told finishes. :func:`tenant_wait_ms` drives the same pass for the
refusal of a tenant's ``max_concurrent`` (ORCH-1125..1127): the earliest forecast
end of the tenant's own tasks in flight, when a retry is admitted again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from llama_orch.core.eta import RunningForecast, Slot

from ._forecast_inputs import Expect, job_of
from .pools import Pool
from .tasks import TaskRecord

if TYPE_CHECKING:  # workload.py builds the passes
    from .workload import Workload

__all__ = [
    "TENANT_WAIT_FLOOR_MS",
    "TOLD_ENDS_MAX_AGE_S",
    "TOLD_ENDS_MIN_PASS_S",
    "ForecastPass",
    "ToldEnds",
    "tenant_end_ms",
    "tenant_wait_ms",
]

# ORCH-1125: the floor of every delay ORCH-1957 tells ("at least 100 ms")
TENANT_WAIT_FLOOR_MS = 100
# ORCH-1129: how old the waiting loop's last pass may be for a refusal to read it (two
# ticks of ``waiting.TICK_S``)
TOLD_ENDS_MAX_AGE_S = 0.5
# ORCH-1129: a pass cheaper than this is run by the refusal itself (fresher forecasts)
TOLD_ENDS_MIN_PASS_S = 0.001


class ToldEnds:
    """ORCH-1129: the earliest finish of each tenant's tasks in one waiting-loop pass
    (``at``, monotonic s), as monotonic instants: what their events were told; and
    what that pass took (``cost_s``, wall seconds)."""

    __slots__ = ("at", "cost_s", "ends")

    def __init__(self, at: float) -> None:
        self.at = at
        self.cost_s = 0.0
        self.ends: dict[str, float] = {}

    def add(self, tenant: str, finish_ms: float) -> None:
        end = self.at + finish_ms / 1000.0
        if end < self.ends.get(tenant, math.inf):
            self.ends[tenant] = end


class ForecastPass:
    """The pass of ORCH-2742 over ``queued``, a snapshot of a pool's queue in serving
    order: :meth:`step` each task in that order for its forecast, the one its ``queued``
    events tell (its start with others' slots held, ``held``, plus its own service at
    the completed-runs expectation, ``told``, ORCH-2922); :meth:`finishes` the running
    tasks' told finishes (ORCH-2906, ORCH-2907) after the tasks stepped so far.

    ``floor`` is the earliest start, over the pass's simulations, of the last task
    stepped. Without the pool's dispatch guard (``guard`` None, ``monotone``) no later
    task starts sooner and a running task's finish only moves later, by the prefill of
    a task started before it ends (ORCH-2906): a finish below ``floor`` is final
    (ORCH-1127)."""

    __slots__ = (
        "_held",
        "_now",
        "_run",
        "_starts",
        "_told",
        "floor",
        "monotone",
        "names",
        "queued",
    )

    def __init__(
        self,
        run: RunningForecast,
        starts: RunningForecast | None,
        expects: tuple[Expect, Expect],
        names: list[list[TaskRecord]],
        queued: list[TaskRecord],
        now: float,
        guard: float | None,
    ) -> None:
        self._run, self._starts, self._now = run, starts, now
        self._told, self._held = expects
        self.names = names  # per Ready replica its running tasks, in the order of the loads
        self.queued = queued
        self.monotone = guard is None  # the pool's dispatch guard (ORCH-2931) is off
        self.floor = 0.0

    def step(self, t: TaskRecord) -> Slot:
        """The forecast of ``t``, the next queued task in serving order."""
        s = self._run.step(job_of(t, self._told, self._now))
        floor = s.start_ms
        if self._starts is not None:  # its start with others' slots held, then as told
            a = self._starts.step(job_of(t, self._held, self._now))
            s = Slot(a.start_ms, a.start_ms + s.finish_ms - s.start_ms, a.replica)
            floor = min(floor, a.start_ms)
        self.floor = floor
        return s

    def rows(self) -> list[list[float]]:
        """Per Ready replica its running tasks' finishes so far (ms from now), in the
        order of :attr:`names`: lists the simulation updates in place."""
        return self._run.finishes()

    def finishes(self) -> list[tuple[TaskRecord, float]]:
        """``(task, finish ms from now)`` of every task running on a Ready replica."""
        return [
            (t, ms)
            for recs, row in zip(self.names, self.rows(), strict=True)
            for t, ms in zip(recs, row, strict=True)
        ]


def tenant_end_ms(run: ForecastPass, tenant: str) -> float:
    """ORCH-1125: the earliest forecast end (ms from now) of ``tenant``'s tasks in one
    pool, its running tasks' told finishes and its queued tasks' finishes, from one
    fresh pass; ``inf`` when none is there. Without the dispatch guard the pass ends
    at the first task that starts after the earliest end found (ORCH-1127)."""
    rows = run.rows()
    mine = [  # (its replica's row of finishes, its index), read as the pass moves them
        (rows[r], k)
        for r, recs in enumerate(run.names)
        for k, t in enumerate(recs)
        if t.tenant == tenant
    ]
    queued = math.inf

    def earliest() -> float:  # the running finishes as the pass has moved them so far
        return min([queued, *(row[k] for row, k in mine)])

    for t in run.queued:
        s = run.step(t)
        if t.tenant == tenant:
            queued = min(queued, s.finish_ms)
        if run.monotone and run.floor > earliest():
            break
    return earliest()


def tenant_wait_ms(
    workload: Workload,
    pools: Mapping[str, Pool],
    in_flight: Iterable[TaskRecord],
    tenant: str,
    refusing: Pool,
) -> int:
    """ORCH-1125, ORCH-1126: the delay told to ``tenant`` refused by its
    ``max_concurrent``: the earliest forecast end over its tasks ``in_flight`` in every
    pool it has them in, in whole ms rounded up, at least 100 ms; when none of them has
    a forecast (no Ready replica, or between the queue and a replica), the ORCH-1957
    delay of the ``refusing`` pool. A pool whose waiting loop passed over every one of
    them at most two ticks ago in a pass that took over 1 ms is read from that pass
    (ORCH-1129), the others run it."""
    now = time.monotonic()
    best = math.inf
    admitted: dict[str, float] = {}  # per pool, the latest admission of the tenant's tasks
    for t in in_flight:
        admitted[t.pool_id] = max(admitted.get(t.pool_id, -math.inf), t.created)
    for pid, latest in admitted.items():
        pool = pools.get(pid)
        if pool is None:
            continue
        told = pool.told_ends  # ORCH-1129: the loop's last pass, if costly and covering
        if (
            told is not None
            and told.cost_s > TOLD_ENDS_MIN_PASS_S
            and now - told.at <= TOLD_ENDS_MAX_AGE_S
            and latest <= told.at
        ):
            best = min(best, (told.ends.get(tenant, math.inf) - now) * 1000.0)
            continue
        run = workload.forecast_pass(pool, now)
        if run is not None:
            best = min(best, tenant_end_ms(run, tenant))
    if math.isinf(best):
        return workload.retry_after_ms(refusing)
    return max(TENANT_WAIT_FLOOR_MS, math.ceil(best))
