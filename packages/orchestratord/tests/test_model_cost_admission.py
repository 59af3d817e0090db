"""The admission forecast's cuts (ORCH-2944) against 466ee71's ``Workload.predicted`` and
``_forecast`` (kept below as ``ref_predicted``), to the bit: arbitrary admissions,
dispatches, tokens, first tokens and task ends on one or two replicas of 1-8 slots
(one of them sometimes not Ready), with and without the dispatch guard, the pool's
output shares (learned from the ends) and tasks' guard limits (ORCH-2940)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.eta import Slot, simulate
from llama_orch.core.queue import AdmissionQueue
from llama_orch.core.replica import ReplicaState
from llama_orch.core.servicetime import Prior
from llama_orch.core.task import Phase
from llama_orch.orchestratord._forecast_inputs import job_of
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.orchestratord.workload import PREDICT_HORIZON, Workload

from .test_model_cost_loads import new_task, running_step

ENGINE = "llamacpp-http"


# ``Workload.predicted`` and ``Workload._forecast`` as of 466ee71 (the DEBUG line left out:
# the cut keeps the simulation whenever it is on), but for their names and ``self``'s type
def ref_predicted(w: Workload, pool: SimpleNamespace, rec: TaskRecord, now: float) -> Slot | None:
    position = pool.queue.position(rec)
    if position < 0:
        return None
    held = w._expect(pool, now, completed=False)  # type: ignore[arg-type]
    ahead = [
        job_of(t, held, now) for t in itertools.islice(pool.queue, min(position, PREDICT_HORIZON))
    ]
    loads = w.loads(pool, now, expect=w._expect(pool, now, completed=False))  # type: ignore[arg-type]
    slots = simulate(
        loads,
        [*ahead, job_of(rec, w._expect(pool, now, completed=True), now)],  # type: ignore[arg-type]
        now,
    )
    if not slots:
        return None
    slot = slots[-1]
    extra = position - len(ahead)
    if extra > 0:
        total = sum(max(1, r.slots) for r in loads)
        mean = sum(s.finish_ms - s.start_ms for s in slots[:-1]) / max(1, len(ahead))
        shift = extra * mean / max(1, total)
        slot = Slot(slot.start_ms + shift, slot.finish_ms + shift, slot.replica)
    return slot


_ADMIT = st.tuples(
    st.just("admit"),
    st.integers(0, 3000),  # prompt tokens
    st.one_of(st.integers(1, 2), st.integers(1, 400)),  # max_tokens: often done at once
    st.one_of(st.none(), st.integers(0, 1), st.integers(0, 400)),  # expected_tokens
    st.booleans(),  # prompt counted at admission
    st.one_of(st.none(), st.floats(0.0, 30.0)),  # a guard limit, s from now (ORCH-2931)
)
_TOKENS = st.tuples(st.just("tokens"), st.integers(0, 63), st.integers(1, 40), st.integers(1, 8))
_STEP = st.one_of(
    _ADMIT,
    _ADMIT,
    st.tuples(st.just("dispatch"), st.integers(0, 1)),
    st.tuples(st.just("dispatch"), st.integers(0, 1)),
    st.tuples(st.just("first"), st.integers(0, 63)),
    st.tuples(st.just("first"), st.integers(0, 63)),
    _TOKENS,
    st.tuples(st.just("end"), st.integers(0, 63), st.sampled_from(list(Phase)[2:])),
    st.tuples(st.just("before"), st.integers(0, 63), st.integers(1, 3)),  # a preempted run
    st.tuples(st.just("ready"), st.integers(0, 1)),  # a replica's readiness flips
)


def _pool(w: Workload, slots: tuple[int, ...]) -> SimpleNamespace:
    reps = {}
    for i, n in enumerate(slots):
        rid = f"p-e{i}"
        state = ReplicaState(pool_id="p", replica_id=rid, engine=ENGINE, status="ready", slots=n)
        reps[rid] = SimpleNamespace(state=state)
    return SimpleNamespace(id="p", engine=ENGINE, replicas=reps, queue=AdmissionQueue(1000))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_STEP, st.floats(0.0, 2.0)), min_size=20, max_size=150),
    st.one_of(st.tuples(st.integers(1, 8)), st.tuples(st.integers(1, 8), st.integers(1, 8))),
    st.one_of(st.none(), st.floats(1.0, 3.0)),  # the pool's guard factor (ORCH-2931)
    st.floats(1.0, 80.0),
    st.floats(0.05, 20.0),
)
def test_predicted_equals_466ee71_to_the_bit(steps, slots, guard, decode_ms, prefill_ms):
    """ORCH-2940, ORCH-2944: every admitted task's forecast (start, finish, replica) is
    the reference's, whether the admission passes its position or not, with every
    queued task re-forecast after each step."""
    w = Workload(guards=None if guard is None else {"p": guard})
    w._priors[ENGINE] = Prior(decode_ms_per_token=decode_ms, prefill_ms_per_token=prefill_ms)
    pool = _pool(w, slots)
    now, k = 100.0, 0
    live: list[tuple[str, TaskRecord]] = []
    queued: list[TaskRecord] = []
    for step, dt in steps:
        now += dt
        kind = step[0]
        if kind == "admit":
            _, tin, max_tokens, expected, counted, limit = step
            k += 1
            r = new_task(k, tin, max_tokens, expected, counted)
            r.finish_guard = None if limit is None else now + limit
            pool.queue.push(r, "interactive")
            queued.append(r)
            ref = ref_predicted(w, pool, r, now)
            assert w.predicted(pool, r, now, pool.queue.position(r))[0] == ref  # type: ignore[arg-type]
            assert w.predicted(pool, r, now)[0] == ref  # type: ignore[arg-type]
        elif kind == "dispatch":
            rid = f"p-e{step[1] % len(slots)}"
            r = pool.queue.pop()
            if r is None:
                continue
            queued.remove(r)
            r.dispatched = now
            r.lifecycle.dispatch()
            w.started("p", rid, r)
            w.dispatched(pool, pool.replicas[rid], r, now)  # type: ignore[arg-type]
            live.append((rid, r))
        elif kind == "ready":
            st_ = pool.replicas[f"p-e{step[1] % len(slots)}"].state
            st_.status = "draining" if st_.ready else "ready"
        elif live:
            running_step(w, pool, live, step, now)
        for r in queued:  # every queued task's forecast now, new before the reference
            got = w.predicted(pool, r, now)[0]  # type: ignore[arg-type]
            assert got == ref_predicted(w, pool, r, now)


def test_the_reference_is_not_the_code_under_test():
    assert ref_predicted is not Workload.predicted
    assert ref_predicted.__module__ == __name__


def _task(k: int, max_tokens: int) -> TaskRecord:
    req = GenerateRequest(task_id=f"t{k}", prompt="x" * 9, max_tokens=max_tokens, seed=1)
    return TaskRecord(f"t{k}", "p", ENGINE, "interactive", req, 10)


def test_a_task_with_all_its_tokens_and_no_prefill_frees_its_slot():
    """ORCH-2944's shortcut holds only with a prefill in progress: here the running task
    has its one token (0 ms left, its slot free) and none prefills, so the forecast is
    the simulation's, at one busy slot (the shortcut would count two)."""
    w = Workload()
    pool = _pool(w, (4,))
    a = _task(1, 1)
    pool.queue.push(a, "interactive")
    assert w.predicted(pool, a, 100.0)[0] == ref_predicted(w, pool, a, 100.0)  # type: ignore[arg-type]
    pool.queue.pop()
    a.dispatched = 100.0
    a.lifecycle.dispatch()
    w.started("p", "p-e0", a)
    a.run_first_token = a.last_token = 100.1
    a.engine_tokens = 1
    b = _task(2, 50)
    pool.queue.push(b, "interactive")
    got = w.predicted(pool, b, 100.1)[0]  # type: ignore[arg-type]
    assert got == ref_predicted(w, pool, b, 100.1)  # type: ignore[arg-type]
    a.engine_tokens = 0  # one token left: its slot held, as the shortcut counts it
    assert w.predicted(pool, b, 100.1)[0] != got  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(-5, 3000)), max_size=80),
    st.lists(st.tuples(st.floats(-1.0, 170.0), st.floats(-1.0, 170.0)), min_size=1, max_size=20),
)
def test_one_search_a_span_is_both_queries(dispatches, spans):
    """ORCH-2944: ``Workload.observe`` takes a run's others' prompts and their squares
    (ORCH-1990, ORCH-2900) from one ``between_squares`` a span: the same integers as
    ``prompt_tokens_between`` and ``prompt_squares_between``, in or out of time order."""
    w = Workload()
    pool = _pool(w, (2,))
    model = w.model(pool, "p-e0", 2)  # type: ignore[arg-type]
    now = 100.0
    for dt, n in dispatches:
        now += dt - 0.5  # sometimes back in time: the log is rebuilt sorted
        model.dispatched(n, now)
    for a, b in spans:
        t0, t1 = 100.0 + a, 100.0 + b
        both = model.prompt_index().between_squares(t0, t1)
        assert both == (model.prompt_tokens_between(t0, t1), model.prompt_squares_between(t0, t1))
