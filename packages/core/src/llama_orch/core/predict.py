"""Predictions from measured rates: start, backoff, deadlines, shares (ORCH-1105, ORCH-1112..1113).

Pure code: every function takes the quantities it needs; nothing reads a clock.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = ["DrainRate", "ReplicaForecast", "ShareTracker", "forecast_ms", "on_time_probability"]


class DrainRate:
    """How fast a pool finishes tasks, to compute backoff (ORCH-1105).

    Keeps an EWMA of task service time (dispatch → terminal), of the decode
    cost per token, and the number of slots serving in parallel; before any
    task finished it uses a prior derived from the requested token budget.
    """

    def __init__(self, slots: int, *, alpha: float = 0.3, prior_ms_per_token: float = 25.0):
        self.slots = max(1, slots)
        self._alpha = alpha
        self._prior = prior_ms_per_token
        self.service_ms: float | None = None
        self.ms_per_token: float | None = None

    @property
    def measured(self) -> bool:
        return self.service_ms is not None

    def observe(self, service_ms: float, tokens: int) -> None:
        a = self._alpha
        self.service_ms = (
            service_ms if self.service_ms is None else (a * service_ms + (1 - a) * self.service_ms)
        )
        if tokens > 0:
            per = service_ms / tokens
            self.ms_per_token = (
                per if self.ms_per_token is None else (a * per + (1 - a) * self.ms_per_token)
            )

    def task_ms(self, max_tokens: int) -> float:
        if self.service_ms is not None:
            return self.service_ms
        return max_tokens * (self.ms_per_token or self._prior)

    def decode_ms(self, tokens: int) -> float:
        """Expected service time of a task that generates ``tokens`` tokens."""
        return tokens * (self.ms_per_token or self._prior)

    def predicted_start_ms(self, ahead: int, running: int, max_tokens: int) -> int:
        """Time until a task with ``ahead`` queued tasks before it gets a slot."""
        busy = max(0, running + ahead - self.slots + 1)
        return int(busy * self.task_ms(max_tokens) / self.slots)

    def retry_after_ms(self, running: int, max_tokens: int) -> int:
        """Time until the next slot frees (a full queue gains room), at least 100 ms."""
        return max(100, self.predicted_start_ms(0, max(running, self.slots), max_tokens))


class ReplicaForecast(NamedTuple):
    """What :func:`forecast_ms` needs to know about one Ready replica."""

    ms_per_token: float  # its own measured rate (or the pool's, or the prior)
    slots: int
    running: Sequence[int]  # remaining tokens of each task running on it


def forecast_ms(
    replicas: Sequence[ReplicaForecast], ahead: Iterable[int], tokens: int
) -> tuple[float, float] | None:
    """``(start, finish)`` of a new task of ``tokens`` tokens, in ms from now (ORCH-1905).

    Every slot of every replica is free after the remaining tokens of the task
    it runs times its replica's rate; the tasks queued ahead (their token
    counts, in serving order) each take the earliest free slot; the new task
    takes the slot where it would finish first. None when no replica is Ready.
    Cost O((slots + ahead) log slots).
    """
    free: list[tuple[float, int]] = []
    for idx, r in enumerate(replicas):
        busy = sorted(r.running)
        for k in range(max(1, r.slots)):
            free.append((busy[k] * r.ms_per_token if k < len(busy) else 0.0, idx))
    if not free:
        return None
    heapq.heapify(free)
    for n in ahead:
        t, idx = free[0]
        heapq.heapreplace(free, (t + n * replicas[idx].ms_per_token, idx))
    start, finish = min(
        ((t, t + tokens * replicas[idx].ms_per_token) for t, idx in free), key=lambda x: x[1]
    )
    return start, finish


def on_time_probability(remaining_ms: float, expected_ms: float, cv: float = 0.25) -> float:
    """P(finish within ``remaining_ms``) if service time is normal around ``expected_ms``
    with coefficient of variation ``cv`` (ORCH-1112)."""
    if remaining_ms <= 0:
        return 0.0
    if expected_ms <= 0:
        return 1.0
    z = (remaining_ms - expected_ms) / (cv * expected_ms)
    return round(0.5 * (1 + math.erf(z / math.sqrt(2))), 4)


class ShareTracker:
    """EWMA of who got the dispatches, per priority and per tenant (ORCH-1113).

    Two levels, as the queue schedules: the share of each priority among all
    dispatches, and the share of each tenant among its priority's
    dispatches; ``share(tenant, priority)`` is their product. Each level is a
    bias-corrected EWMA (factor ``alpha``): the weights of the observations
    are normalised by their sum, so the first dispatch of a level does not
    dominate it while few were observed (a plain EWMA started at 1.0 for the
    first class seen would). The shares of a level sum to 1 once anything was
    observed. Cost is O(#classes) per observation.
    """

    def __init__(self, alpha: float = 0.01) -> None:
        self.alpha = alpha
        self.priorities: dict[str, float] = {}
        self.tenants: dict[str, dict[str, float]] = {}
        self._norm: dict[str | None, float] = {}  # 1 - (1 - alpha)^n per level

    def _step(self, level: str | None, shares: dict[str, float], cls: str) -> None:
        a = self.alpha
        norm = self._norm.get(level, 0.0)
        new = norm * (1 - a) + a
        keep = norm * (1 - a) / new
        for k in shares:
            shares[k] *= keep
        shares[cls] = shares.get(cls, 0.0) + a / new
        self._norm[level] = new

    def observe(self, priority: str, tenant: str) -> None:
        self._step(None, self.priorities, priority)
        self._step(priority, self.tenants.setdefault(priority, {}), tenant)

    def share(self, tenant: str, priority: str) -> float:
        return self.priorities.get(priority, 0.0) * self.tenants.get(priority, {}).get(tenant, 0.0)

    def items(self) -> list[tuple[str, str, float]]:
        """``(tenant, priority, share)`` for every class seen."""
        return [
            (t, p, self.priorities.get(p, 0.0) * v)
            for p, ts in self.tenants.items()
            for t, v in ts.items()
        ]
