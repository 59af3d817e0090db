"""ORCH-2760: the forecast's slot simulation keeps one sorted list of free times per
replica instead of a heap of every slot (issue #20: the bench engine's 512 slots made
each admission O(slots)); its forecasts are the same as the per-slot simulation's."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.eta import Job, ReplicaLoad, Slot, best_slot, simulate
from llama_orch.core.servicetime import Observation, Prior, ServiceModel

NOW = 1000.0


def _ref_run(
    replicas: Sequence[ReplicaLoad], jobs: Iterable[Job], now: float
) -> tuple[list[Slot], list[list[float]]] | None:
    """The per-slot simulation the sorted lists replaced (a heap entry per slot)."""
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
        end = t + _ref_service(replicas[idx], free[idx], k, t, job, now)
        free[idx][k] = end
        heapq.heapreplace(heap, (end, idx, k))
        out.append(Slot(t, end, idx))
    return out, free


def _ref_service(
    r: ReplicaLoad, free: list[float], k: int, t: float, job: Job, now: float
) -> float:
    busy = 1 + sum(1 for j, f in enumerate(free) if j != k and f > t)
    return r.model.service_ms(job.tokens_in, job.tokens_out, busy, now)


def _ref_best(
    replicas: Sequence[ReplicaLoad], ahead: Iterable[Job], job: Job, now: float
) -> Slot | None:
    ran = _ref_run(replicas, ahead, now)
    if ran is None:
        return None
    best: Slot | None = None
    for idx, times in enumerate(ran[1]):
        k = min(range(len(times)), key=times.__getitem__)
        start = times[k]
        finish = start + _ref_service(replicas[idx], times, k, start, job, now)
        if best is None or finish < best.finish_ms:
            best = Slot(start, finish, idx)
    return best


def _model(slots: int, seed: int) -> ServiceModel:
    m = ServiceModel(Prior(decode_ms_per_token=5.0 + seed % 7), slots=slots)
    for i in range(seed % 5):  # a few observations so that the slowdown is not the prior's
        m.observe(
            Observation(10 * i, 20.0 + i, 50.0 * (i + 1), 8, 1.0 + i % slots, "completed"), NOW
        )
    return m


# running ms left: ties (repeated values, zeros, negatives clamped to 0) on purpose
_ms = st.sampled_from([-3.0, 0.0, 0.0, 5.0, 5.0, 12.5, 40.0, 100.0, 250.0])
_replica = st.tuples(st.integers(0, 9), st.lists(_ms, max_size=12), st.integers(0, 20))
_job = st.builds(Job, st.integers(0, 300), st.integers(0, 64))


@settings(max_examples=300, deadline=None)
@given(st.lists(_replica, max_size=4), st.lists(_job, max_size=30), _job)
def test_forecasts_equal_the_per_slot_simulation(
    reps: list[tuple[int, list[float], int]], jobs: list[Job], job: Job
) -> None:
    replicas = [
        ReplicaLoad(_model(max(1, slots), seed), slots, running) for slots, running, seed in reps
    ]
    ref = _ref_run(replicas, jobs, NOW)
    assert simulate(replicas, jobs, NOW) == (None if ref is None else ref[0])
    assert best_slot(replicas, jobs, job, NOW) == _ref_best(replicas, jobs, job, NOW)
