"""ORCH-2760: the forecast's slot simulation keeps one sorted list of free times per
replica instead of a heap of every slot (issue #20: the bench engine's 512 slots made
each admission O(slots)); its forecasts are the same as the per-slot simulation's,
with the serial prefill of ORCH-1996 (one offset per replica there, every slot here)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.eta import Job, ReplicaLoad, Slot, best_slot, simulate, simulate_released
from llama_orch.core.servicetime import Observation, Prior, ServiceModel

NOW = 1000.0


def _ref_run(
    replicas: Sequence[ReplicaLoad], jobs: Iterable[Job], now: float
) -> tuple[list[Slot], list[list[float]], list[float]] | None:
    """The per-slot simulation (every slot's free time, a scan for the earliest) with
    the serial prefill of ORCH-1996 applied slot by slot: a job begins after its
    replica's prefill in progress, and its prefill delays every other slot of the
    replica that holds work (free time > 0). Times are compared at 1 ns (ties)."""
    free: list[list[float]] = []
    until: list[float] = []
    for r in replicas:
        busy = sorted(max(0.0, ms) for ms in r.running_ms)
        free.append([busy[k] if k < len(busy) else 0.0 for k in range(max(1, r.slots))])
        until.append(max(0.0, r.prefill_ms))
    if not free:
        return None
    out: list[Slot] = []
    for job in jobs:
        _, idx, k = min(
            (round(f, 6), i, j) for i, times in enumerate(free) for j, f in enumerate(times)
        )
        t = free[idx][k]
        begin = max(t, until[idx])
        end = begin + _ref_service(replicas[idx], free[idx], k, t, job, now)
        prefill = replicas[idx].model.params(now).prefill_ms(job.tokens_in)  # ORCH-2900
        until[idx] = begin + prefill
        for j, f in enumerate(free[idx]):
            if j != k and f > 0:
                free[idx][j] = f + prefill
        free[idx][k] = end
        out.append(Slot(t, end, idx))
    return out, free, until


def _ref_service(
    r: ReplicaLoad, free: list[float], k: int, t: float, job: Job, now: float
) -> float:
    busy = 1 + sum(1 for j, f in enumerate(free) if j != k and round(f, 6) > round(t, 6))
    return r.model.service_ms(job.tokens_in, job.tokens_out, busy, now)


def _ref_best(
    replicas: Sequence[ReplicaLoad], ahead: Iterable[Job], job: Job, now: float
) -> Slot | None:
    ran = _ref_run(replicas, ahead, now)
    if ran is None:
        return None
    best: Slot | None = None
    for idx, times in enumerate(ran[1]):
        k = min(range(len(times)), key=lambda j: (round(times[j], 6), j))
        start = times[k]
        begin = max(start, ran[2][idx])
        finish = begin + _ref_service(replicas[idx], times, k, start, job, now)
        if best is None or finish < best.finish_ms:
            best = Slot(start, finish, idx)
    return best


def _same(a: Slot | None, b: Slot | None) -> bool:
    """Equal up to float rounding: the sorted lists add each prefill delay to one
    offset, the per-slot simulation to every slot (ORCH-1996)."""
    if a is None or b is None:
        return a is b
    return (
        a.replica == b.replica
        and math.isclose(a.start_ms, b.start_ms, rel_tol=1e-9, abs_tol=1e-6)
        and math.isclose(a.finish_ms, b.finish_ms, rel_tol=1e-9, abs_tol=1e-6)
    )


def _model(slots: int, seed: int) -> ServiceModel:
    m = ServiceModel(Prior(decode_ms_per_token=5.0 + seed % 7), slots=slots)
    for i in range(seed % 5):  # a few observations so that the slowdown is not the prior's
        # (and the first-token curve bends: ORCH-2900)
        m.observe(
            Observation(60 * i, 20.0 + i + 0.02 * (60 * i) ** 2, 50.0 * (i + 1), 8, 1.0 + i % slots,
                        "completed"),
            NOW,
        )  # fmt: skip
    return m


# running ms left: ties (repeated values, zeros, negatives clamped to 0) on purpose
_ms = st.sampled_from([-3.0, 0.0, 0.0, 5.0, 5.0, 12.5, 40.0, 100.0, 250.0])
_pending = [0.0, 0.0, 30.0, 400.0]  # a replica's prefill in progress (ORCH-1996)
_replica = st.tuples(
    st.integers(0, 9), st.lists(_ms, max_size=12), st.integers(0, 20), st.sampled_from(_pending)
)
_job = st.builds(Job, st.integers(0, 300), st.integers(0, 64))


@settings(max_examples=300, deadline=None)
@given(st.lists(_replica, max_size=4), st.lists(_job, max_size=30), _job)
def test_forecasts_equal_the_per_slot_simulation(
    reps: list[tuple[int, list[float], int, float]], jobs: list[Job], job: Job
) -> None:
    replicas = [
        ReplicaLoad(_model(max(1, slots), seed), slots, running, prefill_ms=pending)
        for slots, running, seed, pending in reps
    ]
    ref = _ref_run(replicas, jobs, NOW)
    got = simulate(replicas, jobs, NOW)
    if ref is None or got is None:
        assert ref is None and got is None
    else:
        assert len(got) == len(ref[0]) and all(map(_same, got, ref[0])), (got, ref[0])
    assert _same(best_slot(replicas, jobs, job, NOW), _ref_best(replicas, jobs, job, NOW))
    # the retry turns' simulation (ORCH-2904) is this one when every job is released now
    released = simulate_released(replicas, [(0.0, j) for j in jobs], NOW)
    assert (released is None) == (got is None)
    if released is not None and got is not None:
        assert len(released) == len(got) and all(map(_same, released, got)), (released, got)
