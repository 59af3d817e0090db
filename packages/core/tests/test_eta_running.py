"""ORCH-2906: the forecast finish of the tasks running now, from the same simulation
as every other forecast: a job that starts on a replica while a task still holds its
slot delays it by the job's prefill (ORCH-1996)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from hypothesis import example, given, settings
from hypothesis import strategies as st
from llama_orch.core.eta import Job, ReplicaLoad, simulate, simulate_running
from llama_orch.core.servicetime import Observation, Prior, ServiceModel

NOW = 1000.0


def _model(slots: int = 4) -> ServiceModel:
    return ServiceModel(Prior(decode_ms_per_token=10.0), slots=slots)


def test_a_job_started_beside_a_running_task_delays_it_by_its_prefill() -> None:
    m = _model()
    prefill = m.params(NOW).prefill_ms(800)
    assert prefill > 0
    ran = simulate_running([ReplicaLoad(m, 4, [1000.0, 3000.0])], [Job(800, 10)], NOW)
    assert ran is not None
    slots, finishes = ran
    assert slots[0].start_ms == 0.0  # an idle slot: it starts now
    assert finishes == [[1000.0 + prefill, 3000.0 + prefill]]


def test_a_job_that_waits_for_the_slot_leaves_the_task_it_waits_for_alone() -> None:
    m = _model(2)
    prefill = m.params(NOW).prefill_ms(500)
    ran = simulate_running([ReplicaLoad(m, 2, [1000.0, 3000.0])], [Job(500, 10)], NOW)
    assert ran is not None
    slots, finishes = ran
    assert slots[0].start_ms == 1000.0  # on the slot the first task frees
    assert finishes == [[1000.0, 3000.0 + prefill]]


def test_without_jobs_the_running_tasks_finish_as_left() -> None:
    ran = simulate_running([ReplicaLoad(_model(), 4, [-5.0, 0.0, 250.0])], [], NOW)
    assert ran == ([], [[0.0, 0.0, 250.0]])


def _ref(replicas: Sequence[ReplicaLoad], jobs: list[Job]) -> list[list[float]]:
    """Per slot, with the running tasks named (the per-slot simulation of ORCH-2760's
    property): a job takes the earliest free slot (ties at 1 ns: the lowest replica,
    then the slot held longest, so a running task's slot before a simulated job's: a
    job that starts when a running task ends does not move it, ORCH-2906); its
    prefill moves every other slot of its replica that holds work."""
    free: list[list[float]] = []
    owner: list[list[int]] = []
    held: list[list[int]] = []  # when each slot's current holder took it (ties)
    until: list[float] = []
    out = [[max(0.0, ms) for ms in r.running_ms] for r in replicas]
    for i, r in enumerate(replicas):
        n = max(1, r.slots)
        kept = sorted(range(len(out[i])), key=lambda k: out[i][k])[:n]
        free.append([out[i][k] for k in kept] + [0.0] * (n - len(kept)))
        owner.append([k if out[i][k] > 0 else -1 for k in kept] + [-1] * (n - len(kept)))
        held.append(list(range(n)))
        until.append(max(0.0, r.prefill_ms))
    taken = max((len(h) for h in held), default=0)
    for job in jobs:
        _, idx, _, k = min(
            (round(f, 6), i, held[i][j], j)
            for i, times in enumerate(free)
            for j, f in enumerate(times)
        )
        r, t = replicas[idx], free[idx][k]
        begin = max(t, until[idx])
        busy = 1 + sum(1 for j, f in enumerate(free[idx]) if j != k and round(f, 6) > round(t, 6))
        end = begin + r.service_ms(job, busy, NOW)
        prefill = r.model.params(NOW).prefill_ms(job.tokens_in)
        until[idx] = begin + prefill
        for j, f in enumerate(free[idx]):
            if j != k and f > 0:
                free[idx][j] = f + prefill
                if owner[idx][j] >= 0:
                    out[idx][owner[idx][j]] = free[idx][j]
        free[idx][k], owner[idx][k], held[idx][k] = end, -1, taken
        taken += 1
    return out


def _seeded(slots: int, seed: int) -> ServiceModel:
    m = ServiceModel(Prior(decode_ms_per_token=5.0 + seed % 7), slots=slots)
    for i in range(seed % 5):  # a bent first-token curve (ORCH-2900), a learned slowdown
        m.observe(
            Observation(60 * i, 20.0 + i + 0.02 * (60 * i) ** 2, 50.0 * (i + 1), 8, 1.0 + i % slots,
                        "completed"),
            NOW,
        )  # fmt: skip
    return m


# distinct running times (ties between running tasks are symmetric: either may be the
# one a job takes) but zeros and negatives on purpose
_ms = st.sampled_from([-3.0, 0.0, 5.0, 12.5, 40.0, 100.0, 250.0, 777.0])
_replica = st.tuples(
    st.integers(0, 6),
    st.lists(_ms, max_size=8, unique=True),
    st.integers(0, 20),
    st.sampled_from([0.0, 30.0, 400.0]),
)
_job = st.builds(Job, st.integers(0, 300), st.integers(0, 64))


@settings(max_examples=300, deadline=None)
@given(st.lists(_replica, max_size=3), st.lists(_job, max_size=20))
@example(  # session 25 (suite25): a job starts at 100 ms where a running task ends
    [(2, [], 0, 0.0), (5, [-3.0, 0.0, 100.0, 250.0, 5.0], 0, 30.0)],
    [Job(0, 0), Job(26, 0), Job(0, 0), Job(0, 3), Job(0, 3), Job(0, 0), Job(1, 0)],
)
def test_running_finishes_equal_the_per_slot_simulation(
    reps: list[tuple[int, list[float], int, float]], jobs: list[Job]
) -> None:
    replicas = [
        ReplicaLoad(_seeded(max(1, slots), seed), slots, running, prefill_ms=pending)
        for slots, running, seed, pending in reps
    ]
    ran = simulate_running(replicas, jobs, NOW)
    plain = simulate(replicas, jobs, NOW)
    if ran is None:
        assert plain is None
        return
    slots, finishes = ran
    assert slots == plain  # the jobs' forecasts are simulate's
    ref = _ref(replicas, jobs)
    for got, want in zip(finishes, ref, strict=True):
        assert len(got) == len(want)
        assert all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6) for a, b in zip(got, want, strict=True)
        ), (got, want)


def test_spans_cover_their_union_within_a_window() -> None:
    """ORCH-2911: overlapping spans count once; a window cuts the spans at its edges."""
    from llama_orch.core.time_index import Spans

    s = Spans([(1.0, 3.0), (2.0, 4.0), (6.0, 7.0), (5.0, 5.0)])
    assert s.covered(0.0, 10.0) == 4.0
    assert s.covered(2.5, 6.5) == 2.0
    assert s.covered(4.0, 6.0) == 0.0
    assert s.covered(3.0, 3.0) == 0.0
    assert Spans([]).covered(0.0, 1.0) == 0.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=12),
    st.integers(0, 40),
    st.integers(0, 40),
)
def test_spans_equal_counting_unit_steps(spans: list[tuple[int, int]], t0: int, t1: int) -> None:
    from llama_orch.core.time_index import Spans

    want = sum(1 for k in range(t0, t1) if any(a <= k and k + 1 <= b for a, b in spans))
    assert Spans([(float(a), float(b)) for a, b in spans]).covered(t0, t1) == want
