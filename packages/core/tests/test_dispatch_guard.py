"""The dispatch guard in the forecasts (ORCH-2931, ORCH-2933, ORCH-2936): when a job may
start under the guard, that a held job's forecast starts when the tasks it protects end,
that no protected running task is forecast past its limit by the jobs started beside
it, and that without the guard every forecast is the one without limits, bit for bit."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st
from llama_orch.core.eta import (
    Job,
    ReplicaLoad,
    best_slot,
    replica_holds,
    simulate,
    simulate_held,
    simulate_running,
)
from llama_orch.core.guard import EDGE_SHARE, _tick, guard_hold
from llama_orch.core.servicetime import ModelParams, Observation, Prior, ServiceModel

NOW = 1000.0
INF = math.inf


def _model(slots: int, seed: int = 0) -> ServiceModel:
    m = ServiceModel(Prior(decode_ms_per_token=5.0 + seed % 7), slots=slots)
    for i in range(seed % 5):  # a bent first-token curve (ORCH-2900), a learned slowdown
        m.observe(
            Observation(60 * i, 20.0 + i + 0.02 * (60 * i) ** 2, 50.0 * (i + 1), 8, 1.0 + i % slots,
                        "completed"),
            NOW,
        )  # fmt: skip
    return m


class _Flat(ServiceModel):
    """A model without decode slowdown (``s = 0``): the guard's readings of a lane at the
    busy slots of an instant are its forecasts themselves (ORCH-2970)."""

    def params(self, now: float) -> ModelParams:
        return super().params(now)._replace(slowdown=0.0)


def _flat(slots: int, seed: int = 0) -> ServiceModel:
    m = _Flat(Prior(decode_ms_per_token=5.0 + seed % 7), slots=slots)
    m.__dict__.update(_model(slots, seed).__dict__)  # the same learned terms
    return m


_t = st.floats(0.0, 5000.0, allow_nan=False)
_lim = st.one_of(st.just(INF), _t)


_told_hold = st.sampled_from([None, True, False])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_t, _lim), max_size=8), st.floats(0.0, 3000.0), _t, _told_hold)
@example([(9.648265922539745e-260, 0.5)], 1.0, 0.0, None)  # ends at 0 at 1 ns: holds nothing
def test_a_guarded_start_pushes_no_protected_slot_past_its_limit(
    slots: list[tuple[float, float]], prefill: float, t: float, told: bool | None
) -> None:
    """ORCH-2931, ORCH-2932, ORCH-2938: at the start the guard gives, no slot still
    holding work is inside the band of the job's told decision (the plain rule, pushed
    from within its limit to past it, for none); the start is ``t`` or the end of a slot
    inside it, so it comes at the latest when those slots end."""
    m = 0.0 if told is None else (EDGE_SHARE if told else -EDGE_SHARE) * prefill

    def inside(end: float, limit: float) -> bool:  # at 1 ns, as the guard compares (2938)
        return _tick(end - m) <= _tick(limit) < _tick(end + prefill + m)

    h = guard_hold(slots, prefill, t, told)
    assert h >= t
    for end, limit in slots:
        if _tick(end) > _tick(h):
            assert not inside(end, limit), (end, limit, h)
    if h > t:
        assert any(end == h and inside(end, limit) for end, limit in slots)
    assert h <= max([t, *(end for end, _ in slots)])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(_t, _lim), max_size=8), st.floats(0.0, 3000.0), _t)
def test_a_told_hold_is_kept_and_a_told_go_is_not_contradicted(
    slots: list[tuple[float, float]], prefill: float, t: float
) -> None:
    """ORCH-2937, ORCH-2938: a job told held waits at least as long as the plain rule
    says, one told not held at most as long (its band is inside the plain one)."""
    plain = guard_hold(slots, prefill, t)
    assert guard_hold(slots, prefill, t, False) <= plain <= guard_hold(slots, prefill, t, True)


def test_the_told_decision_moves_the_edge() -> None:
    """ORCH-2937 on run 0835's case: a task queued behind a held head, its 202's forecast
    giving 15.55 s of slack to the head's limit against its ~15.9 s prefill (held, told
    27.9 s) and the dispatcher then ~16.3 s (not held by the plain rule): told held, it
    is held at dispatch too; a job told not held is not held a hair inside the edge."""
    head = [(6300.0, 6300.0 + 16300.0)]  # the head's end and limit at dispatch, ms
    assert guard_hold(head, 15900.0, 0.0) == 0.0  # the plain rule: not held
    assert guard_hold(head, 15900.0, 0.0, True) == 6300.0  # told held: kept
    near = [(6300.0, 6300.0 + 15500.0)]  # slack 15.5 s: the plain rule holds it
    assert guard_hold(near, 15900.0, 0.0) == 6300.0
    assert guard_hold(near, 15900.0, 0.0, False) == 0.0  # told not held: goes
    far = [(6300.0, 6300.0 + 5000.0)]  # a third of the prefill's slack: held either way
    assert guard_hold(far, 15900.0, 0.0, False) == 6300.0


def test_the_forecast_says_whether_it_held_the_job() -> None:
    """ORCH-2937: ``simulate_held`` gives ``simulate``'s slots and whether the guard held
    the last job past its free slot and the job ahead (what its 202 tells it)."""
    m = _model(2)
    load = ReplicaLoad(m, 2, [1000.0], limits_ms=[1100.0], guard=2.0)
    held = simulate_held([load], [Job(800, 10)], NOW)
    assert held == (simulate([load], [Job(800, 10)], NOW), True)
    free = simulate_held([load], [Job(0, 10)], NOW)  # no prefill to push: not held
    assert free is not None and free[1] is False and free[0][0].start_ms == 0.0
    # behind a held head but not held itself: the floor is not its own hold
    behind = simulate_held([load], [Job(800, 10), Job(0, 10)], NOW)
    assert behind is not None and behind[0][1].start_ms == 1000.0 and behind[1] is False
    plain = ReplicaLoad(m, 2, [1000.0])  # no guard: never held
    assert simulate_held([plain], [Job(800, 10)], NOW) == (
        simulate([plain], [Job(800, 10)], NOW), False)  # fmt: skip
    assert simulate_held([], [Job(1, 1)], NOW) == ([], False)


def test_a_held_job_starts_when_the_task_it_protects_ends() -> None:
    """ORCH-2933: a free slot, but the job's prefill would push the running task (1 s
    left, limit 1.1 s) past its limit: it starts at 1 s, and the running task's
    forecast finish does not carry its prefill (ORCH-2906)."""
    m = _model(2)
    job = Job(800, 10)
    prefill = m.params(NOW).prefill_ms(800)
    assert prefill > 100
    load = ReplicaLoad(m, 2, [1000.0], limits_ms=[1100.0], guard=2.0)
    ran = simulate_running([load], [job], NOW)
    assert ran is not None
    (slot,), finishes = ran
    assert slot.start_ms == 1000.0
    assert finishes == [[1000.0]]
    assert replica_holds([load], job, NOW)[0] is not None
    best = best_slot([load], [], job, NOW)
    assert best is not None and best.start_ms == 1000.0  # deadline feasibility too
    # the same task already forecast past its limit is not protected: it goes now
    past = ReplicaLoad(m, 2, [1000.0], limits_ms=[900.0], guard=2.0)
    assert simulate([past], [job], NOW) == simulate([ReplicaLoad(m, 2, [1000.0])], [job], NOW)
    assert replica_holds([past], job, NOW) == [None]
    # a limit the prefill keeps: no hold
    roomy = ReplicaLoad(m, 2, [1000.0], limits_ms=[1000.0 + prefill], guard=2.0)
    assert simulate([roomy], [job], NOW)[0].start_ms == 0.0  # type: ignore[index]  # one replica


def test_nothing_passes_a_held_job() -> None:
    """ORCH-2932, ORCH-2933: a short prompt behind the held one, which alone would start
    now on the idle slot, starts when the held one does (the dispatcher's head-of-line);
    so does a new task's forecast after it (``best_slot``, deadline feasibility)."""
    m = _model(4)
    load = ReplicaLoad(m, 4, [1000.0], limits_ms=[1100.0], guard=2.0)
    small = Job(1, 10)
    assert simulate([load], [small], NOW)[0].start_ms == 0.0  # type: ignore[index]
    out = simulate([load], [Job(800, 10), small], NOW)
    assert out is not None and [s.start_ms for s in out] == [1000.0, 1000.0]
    best = best_slot([load], [Job(800, 10)], small, NOW)
    assert best is not None and best.start_ms == 1000.0


def test_a_queued_task_keeps_the_limit_it_was_told() -> None:
    """ORCH-2933: a job ahead with its own guard limit (a queued task's, from its 202) is
    protected by that limit; without one, by the factor x its forecast finish."""
    load = ReplicaLoad(_model(2), 2, [], limits_ms=[], guard=1.5)
    told = simulate([load], [Job(10, 100), Job(800, 10)], NOW)
    assert told is not None and told[1].start_ms == told[0].finish_ms  # held behind it
    roomy = simulate([load], [Job(10, 100, INF), Job(800, 10)], NOW)
    assert roomy is not None and roomy[1].start_ms == 0.0


def test_a_job_goes_to_the_replica_where_it_is_not_held() -> None:
    """ORCH-2933: held on the first replica, free on the second: it starts there now."""
    m = _model(2)
    guarded = ReplicaLoad(m, 2, [1000.0], limits_ms=[1100.0], guard=2.0)
    busy = ReplicaLoad(m, 2, [3000.0], limits_ms=[INF], guard=2.0)
    out = simulate([guarded, busy], [Job(800, 10)], NOW)
    assert out is not None and out[0].replica == 1 and out[0].start_ms == 0.0


_ms = st.sampled_from([-3.0, 0.0, 5.0, 12.5, 40.0, 100.0, 250.0, 777.0, 2000.0])
_replica = st.tuples(
    st.integers(0, 6),
    st.lists(_ms, max_size=8, unique=True),
    st.integers(0, 20),
    st.sampled_from([0.0, 30.0, 400.0]),
    st.lists(st.sampled_from([INF, 50.0, 300.0, 800.0, 2500.0]), min_size=8, max_size=8),
)
# a job decided now (no limit, no told decision: ``builds`` would draw the defaults)
_job = st.builds(Job, st.integers(0, 300), st.integers(0, 64), st.none(), st.none())


def _loads(
    reps, guard: float | None, *, limits: bool = True, flat: bool = False
) -> list[ReplicaLoad]:
    make = _flat if flat else _model
    return [
        ReplicaLoad(
            make(max(1, slots), seed), slots, running, prefill_ms=pending,
            limits_ms=lims[: len(running)] if limits else None, guard=guard,
        )
        for slots, running, seed, pending, lims in reps
    ]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_replica, max_size=3), st.lists(_job, max_size=20), _job, _told_hold)
def test_without_the_guard_every_forecast_is_the_one_without_limits(reps, jobs, job, told) -> None:
    """ORCH-2933: guard None (limits given or not): equal to the last bit; and a guard
    that protects nothing (no limit, a factor no finish reaches) changes nothing; nor,
    without the guard, does a told decision (ORCH-2937)."""
    plain = _loads(reps, None, limits=False)
    assert simulate(_loads(reps, None), [j._replace(told_hold=told) for j in jobs], NOW) == (
        simulate(plain, jobs, NOW))  # fmt: skip
    for other in (_loads(reps, None), _loads(reps, 1e300, limits=False)):
        assert simulate(other, jobs, NOW) == simulate(plain, jobs, NOW)
        assert simulate_running(other, jobs, NOW) == simulate_running(plain, jobs, NOW)
        assert best_slot(other, jobs, job, NOW) == best_slot(plain, jobs, job, NOW)


@settings(max_examples=300, deadline=None)
@given(st.lists(_replica, min_size=1, max_size=3), st.lists(_job, max_size=20))
def test_no_protected_running_task_is_forecast_past_its_limit(reps, jobs) -> None:
    """ORCH-2933: with the guard, a running task forecast within its limit stays within
    it whatever jobs the simulation starts beside it (the jobs wait instead). ORCH-2970,
    ORCH-2971: on a model without decode slowdown, where the lane's readings at the busy
    slots of an instant are its forecasts; with one, a task's end read at more busy slots
    may pass its limit by the slowdown of the jobs beside it, which the guard does not
    judge (ORCH-2931 judges their prefill), at the dispatcher as in the forecast."""
    loads = _loads(reps, 1.5, flat=True)
    ran = simulate_running(loads, jobs, NOW)
    assert ran is not None
    slots, finishes = ran
    starts = [s.start_ms for s in slots]
    assert starts == sorted(starts)  # in serving order: none passes a held job
    for load, row in zip(loads, finishes, strict=True):
        kept = sorted(range(len(load.running_ms)), key=lambda k: load.running_ms[k])
        kept = kept[: max(1, load.slots)]
        for k in kept:
            ms, limit = max(0.0, load.running_ms[k]), load.limits_ms[k]  # type: ignore[index]
            if 0.0 < ms <= limit:
                assert row[k] <= limit + 1e-6, (k, row, load.running_ms, load.limits_ms)


def _dispatcher_starts(load: ReplicaLoad, jobs: list[Job]) -> list[float]:
    """The starts the dispatcher gives ``jobs`` (queued in this order, nothing else
    arriving, every forecast exact): at each instant it reads the replica as
    :func:`replica_holds` does, the slots still holding work with their ms left and
    limits then, and dispatches the head when a slot is free and it is not held."""
    n = max(1, load.slots)
    params = load.model.params(NOW)
    slow = params.slowdown
    lims = load.limits_ms or ()
    live = sorted(
        (max(0.0, ms), lims[i] if i < len(lims) else INF) for i, ms in enumerate(load.running_ms)
    )[:n]
    b0 = max(1, len(load.running_ms))  # the busy slots its ms left were forecast at
    slots = [[e, lim, b0] for e, lim in live if e > 0.0]  # absolute ms from NOW
    idle, prefill_until, floor = n - len(slots), max(0.0, load.prefill_ms), 0.0
    out = []

    def g(b: float) -> float:
        return 1.0 + slow * (b - 1)

    def holds(at_: float, ends: list[float], job: Job) -> tuple[float, float] | None:
        """``replica_holds`` at ``at_`` on the slots holding work then, ending at ``ends``."""
        at = [(e, s[1]) for e, s in zip(ends, slots, strict=True) if round(e, 6) > round(at_, 6)]
        view = ReplicaLoad(load.model, n, [e - at_ for e, _ in at], pace=load.pace,
                           limits_ms=[lim - at_ for _, lim in at], guard=load.guard)  # fmt: skip
        return replica_holds([view], job, NOW)[0]

    for job in jobs:
        t = max(floor, 0.0 if idle else min(e for e, _, _ in slots))
        ends = [e for e, _, _ in slots]
        if holds(t, ends, job) is not None:
            t0 = t
            # ORCH-2970: the dispatcher's readings, at ``t`` and at every slot's end while
            # it holds the head: each slot holding work, its ms left at the busy slots then
            b_t = sum(1 for e in ends if round(e, 6) > round(t, 6))
            ends = [t + (e - t) * g(b_t) / g(s[2]) if round(e, 6) > round(t, 6) else e
                    for e, s in zip(ends, slots, strict=True)]  # fmt: skip
            while holds(t, ends, job) is not None:
                c = min(e for e in ends if round(e, 6) > round(t, 6))
                b_c = sum(1 for e in ends if round(e, 6) > round(c, 6))
                ends = [c + (e - c) * g(b_c) / g(b_t) if round(e, 6) > round(c, 6) else e
                        for e in ends]  # fmt: skip
                t, b_t = c, b_c
            for e, s in zip(ends, slots, strict=True):  # the lane goes on from that reading
                if round(s[0], 6) > round(t0, 6):
                    s[0], s[2] = e, (b_t if round(e, 6) > round(t, 6) else s[2])
        first = 0.0 if idle else min(e for e, *_ in slots)
        if round(t, 6) > round(first, 6):  # a later start finds the slots freed by then idle
            freed = [s for s in slots if round(s[0], 6) <= round(t, 6)]
        else:  # else it takes an idle slot, or the one that frees first (the lane's ties)
            freed = [] if idle else [min(slots)]
        slots = [s for s in slots if all(s is not f for f in freed)]
        idle += len(freed) - 1
        begin = max(t, prefill_until)
        # it decodes beside the slots that hold work past its start; one that frees at
        # that very instant (a tie with the slot it took) holds none (``others_busy``)
        beside = sum(1 for s in slots if round(s[0], 6) > round(t, 6))
        end = begin + load.service_ms(job, 1 + beside, NOW)
        prefill = params.prefill_ms(job.tokens_in)
        prefill_until = begin + prefill
        for s in slots:
            s[0] += prefill
        if end > 0.0:
            limit = (load.guard or INF) * end if job.limit_ms is None else job.limit_ms
            slots.append([end, limit, 1 + beside])
        else:
            idle += 1
        out.append(t)
        floor = t
    return out


_told = st.one_of(st.none(), st.just(INF), st.sampled_from([300.0, 1200.0, 3000.0, 8000.0]))


@settings(max_examples=400, deadline=None)
@given(
    _replica,
    st.lists(
        st.builds(Job, st.integers(0, 900), st.integers(0, 64), _told, _told_hold), max_size=10
    ),
    st.sampled_from([1.0, 1.2, 1.5, 2.0]),
)
# session 19: two slots free at one instant, the job takes one and decodes beside the
# two that hold work past it, not three (the reference counted the other tie as busy)
@example(
    (4, [-3.0, 0.0], 5, 0.0, [INF] * 6 + [50.0, INF]),
    [Job(150, 64, INF, False), Job(188, 14, INF, None), Job(836, 1, INF, False),
     Job(2, 1, INF, False), Job(1, 4, INF, True), Job(2, 1, INF, False), Job(1, 1, INF, None),
     Job(0, 0, None, None)],
    1.5,
)  # fmt: skip
# session 19: at a factor of 1 a job's limit is its own forecast end; kept, whichever
# way that end rounds in the lane's stored form (``guard_hold`` compares at 1 ns)
@example(
    (6, [-3.0, 5.0, 12.5, 40.0, 100.0, 250.0], 8, 400.0, [INF] * 8),
    [Job(583, 53, None, None), Job(1, 0, None, None)],
    1.0,
)
def test_a_simulated_hold_is_the_dispatchers_hold(rep, jobs, guard) -> None:
    """ORCH-2933 (guard17b), ORCH-2938: the forecast start of every queued job (with the
    decision its 202 told it, ORCH-2937) is the start the dispatcher gives it reading the
    replica at each instant by ORCH-2931's rule with the same inputs: no simulated hold
    outlasts the dispatcher's (nor ends before it), and a
    slot a job took is gone from the lane's limits (``_Lane.take``'s two ``del``). Run
    0835's queue held 27.9 s in the forecast and 6.3 s in fact differed in the inputs
    (its head dispatched 0.57 s before its forecast start), not in the rule."""
    (load,) = _loads([rep], guard)
    out = simulate([load], jobs, NOW)
    assert out is not None
    want = _dispatcher_starts(load, jobs)
    for got, exp in zip([s.start_ms for s in out], want, strict=True):
        assert math.isclose(got, exp, rel_tol=1e-9, abs_tol=1e-6), ([s.start_ms for s in out], want)


def test_a_freed_slot_protects_nothing() -> None:
    """ORCH-2933 (guard17b): three slots full (500 ms left, limit 3 s; 1 s, 3 s; 1 s,
    1.2 s): the first job takes the slot freed at 500 ms, the second is held to 1.2 s
    (its prefill would push the 1.2 s-limit task past it), and the third starts beside
    it at 1.2 s; were the slot taken at 500 ms kept in the lane's limits, a task already
    ended would hold the third until 2.8 s (``del self.limits[0]`` in ``_Lane.take``)."""
    # a model without decode slowdown (ORCH-2970's readings are then the forecasts)
    load = ReplicaLoad(_flat(3), 3, [500.0, 1000.0, 1000.0], limits_ms=[3000.0, 3000.0, 1200.0],
                       guard=1.5)  # fmt: skip
    jobs = [Job(100, 10, INF), Job(800, 10, INF), Job(800, 10, INF)]
    out = simulate([load], jobs, NOW)
    assert out is not None and [s.start_ms for s in out] == [500.0, 1200.0, 1200.0]
    assert [s.start_ms for s in out] == _dispatcher_starts(load, jobs)
