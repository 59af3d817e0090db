"""Start and finish forecasts over a replica set from service-time models (ORCH-1957..1959).

Every prediction the orchestrator makes (``predicted_start_ms``, backoff and
``Retry-After``, deadline feasibility, ``on_time_probability``, the ETA of a
queued task) is one call of :func:`simulate`: each Ready replica's slots
become free when the work running on them is done; the queued tasks are
assigned in serving order to the earliest free slot; each one's service time
comes from that replica's :class:`~llama_orch.core.servicetime.ServiceModel`
at the number of its slots busy at that moment.

Pure code: the caller passes ``now`` and the models.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .servicetime import ServiceModel

__all__ = ["Job", "ReplicaLoad", "Slot", "admits", "best_slot", "simulate"]


class Job(NamedTuple):
    tokens_in: int
    tokens_out: int


class Slot(NamedTuple):
    """Where and when a job starts and ends, in ms from now."""

    start_ms: float
    finish_ms: float
    replica: int  # index into the replicas given


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One Ready replica: its model, its slots and the ms left of each running task."""

    model: ServiceModel
    slots: int
    running_ms: Sequence[float]


def _run(
    replicas: Sequence[ReplicaLoad], jobs: Iterable[Job], now: float
) -> tuple[list[Slot], list[list[float]]] | None:
    free: list[list[float]] = []
    heap: list[tuple[float, int, int]] = []
    for idx, r in enumerate(replicas):
        busy = sorted(max(0.0, ms) for ms in r.running_ms)
        times = [busy[k] if k < len(busy) else 0.0 for k in range(max(1, r.slots))]
        free.append(times)
        heap.extend((t, idx, k) for k, t in enumerate(times))
    if not heap:
        return None
    heapq.heapify(heap)
    out: list[Slot] = []
    for job in jobs:
        t, idx, k = heap[0]
        end = t + _service(replicas[idx], free[idx], k, t, job, now)
        free[idx][k] = end
        heapq.heapreplace(heap, (end, idx, k))
        out.append(Slot(t, end, idx))
    return out, free


def _service(r: ReplicaLoad, free: list[float], k: int, t: float, job: Job, now: float) -> float:
    busy = 1 + sum(1 for j, f in enumerate(free) if j != k and f > t)
    return r.model.service_ms(job.tokens_in, job.tokens_out, busy, now)


def simulate(replicas: Sequence[ReplicaLoad], jobs: Iterable[Job], now: float) -> list[Slot] | None:
    """Forecast every job of ``jobs`` (in serving order); None with no replica.

    A job takes the slot that frees first (ties: lowest replica index); it
    decodes at the pace of its replica with as many slots busy as are busy
    when it starts (itself included). Cost O(jobs x slots).
    """
    ran = _run(replicas, jobs, now)
    return None if ran is None else ran[0]


def best_slot(
    replicas: Sequence[ReplicaLoad], ahead: Iterable[Job], job: Job, now: float
) -> Slot | None:
    """Forecast of ``job`` after the jobs ``ahead``: the earliest free slot of each
    replica, and of those the one where it would finish first (ORCH-1957)."""
    ran = _run(replicas, ahead, now)
    if ran is None:
        return None
    best: Slot | None = None
    for idx, times in enumerate(ran[1]):
        k = min(range(len(times)), key=times.__getitem__)
        start = times[k]
        finish = start + _service(replicas[idx], times, k, start, job, now)
        if best is None or finish < best.finish_ms:
            best = Slot(start, finish, idx)
    return best


def admits(finish_ms: float, deadline_ms: float, margin: float) -> bool:
    """The admission rule (ORCH-1958): refuse only when even a forecast ``margin``
    too pessimistic would miss the deadline, i.e. ``finish x (1 - margin) > deadline``."""
    return finish_ms * (1.0 - margin) <= deadline_ms
