"""``Workload.loads`` cut (ORCH-2941) against 9d35416's (kept below as ``ref_loads``, with
ORCH-2926's ended spans added), to the bit: arbitrary dispatches, tokens, first tokens and
task ends on one or two replicas, queried with and without the pool's output shares
(ORCH-2922) and a trace (ORCH-1994)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.eta import Pace, ReplicaLoad, live_pace, prefill_left, replica_pace
from llama_orch.core.replica import ReplicaSetKey, ReplicaState
from llama_orch.core.servicetime import Prior
from llama_orch.core.task import Phase
from llama_orch.core.time_index import PromptIndex, Spans
from llama_orch.orchestratord._forecast_inputs import Expect, expected_left, tokens_left
from llama_orch.orchestratord._forecast_inputs import tokens_in as _tokens_in
from llama_orch.orchestratord.pools import Pool
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.orchestratord.workload import Workload

ENGINE = "llamacpp-http"


# ``Workload.loads`` as of 9d35416, unchanged but for its name and ``self``'s type
def ref_loads(
    self: Workload,
    pool: Pool,
    now: float,
    pin: ReplicaSetKey | None = None,
    trace: list[list[tuple[object, ...]]] | None = None,
    expect: Expect = None,
) -> list[ReplicaLoad]:
    """Every Ready replica (of the set ``pin``) with the ms left of its running tasks.
    ``trace``: a list that receives, per replica, each running task's forecast terms
    (ORCH-1994: task id, tokens left, its pace ratio and weight, ms left).
    ``expect``: their tokens left by the pool's shares (ORCH-2922), else budgets."""
    out = []
    for rid, r in pool.replicas.items():
        st = r.state
        if not st.ready or (pin is not None and st.set_key() != pin):
            continue
        model = self.model(pool, rid, st.slots)
        running = self.running.get((pool.id, rid), ())
        left = []
        paces = []
        trace_r: list[tuple[object, ...]] = []
        if trace is not None:
            trace.append(trace_r)
        pending = 0.0  # until the prompts it is prefilling now are done (ORCH-1996)
        if running:
            # the model's parameters once per replica, not once per running task
            p = model.params(now)
            ttfts: dict[int, float] = {}  # the prefilling tasks' ms to their first token
            prefilling: list[tuple[float, int]] = []  # and (dispatch, prompt tokens)
            log = model.prompt_index()  # O(log) a query below (issue #20)
            for t in running:
                if t.run_first_token is None and t.dispatched is not None:
                    prefilling.append((t.dispatched, _tokens_in(t)))
                    # batched with the prompts dispatched after it (ORCH-1996)
                    later = log.between(t.dispatched, now)
                    own = _tokens_in(t)
                    squares = (  # each prompt's own square (ORCH-2900)
                        own * own + t.run_prefill_ahead_sq + log.squares(t.dispatched, now)
                    )
                    ttft = model.ttft_ms(own + t.run_prefill_ahead + later, now, p, squares)
                    # ORCH-2914: past its forecast, a tenth of its time so far is left
                    left_ms = prefill_left(ttft, (now - t.dispatched) * 1000)
                    ttfts[id(t)] = left_ms
                    pending = max(pending, left_ms)
            undone = PromptIndex(prefilling)
            # ORCH-2911: the prompts of running tasks that have their first token
            # stalled the others from their dispatch to that token, as measured
            answered = [
                (t.dispatched, t.run_first_token, _tokens_in(t))
                for t in running
                if t.run_first_token is not None and t.dispatched is not None
            ]
            # ORCH-2926 (session 19), added to the reference on purpose: a rule change,
            # not a cut; the spans of the runs ended since, as the replica's model keeps them
            answered.extend(model.answered_runs())
            measured = PromptIndex((d, n) for d, _, n in answered)
            spans = [(d, f) for d, f, _ in answered]
            # ORCH-2909: the stall in progress began with the earliest prompt undone
            stall_from = min((d for d, _ in prefilling), default=None)
            stalls = Spans(spans)
            stalls_now = Spans([*spans, (stall_from, now)]) if stall_from else stalls
            busy_now = max(1, len(running))
            for t in running:
                # its pace at its context: prompt, tokens so far, half of those left
                left_t = tokens_left(t)
                n = left_t if expect is None else expected_left(t, expect)  # ORCH-2922
                ctx = _tokens_in(t) + t.engine_tokens + left_t / 2  # ORCH-2901
                per = model.decode_ms_per_token(busy_now, now, p, ctx)
                ms = n * per
                pc: Pace | None = None
                if t.run_first_token is None and t.dispatched is not None:
                    # its prompt is batched with the others pending: its first token
                    # comes when the replica's prefill in progress ends (ORCH-1996);
                    # a late first token does not slow its decode (ORCH-2910)
                    ms = max(0.0, ttfts[id(t)], pending)
                    ms += max(0, n - 1) * per
                elif t.run_first_token is not None and t.last_token is not None:
                    # ORCH-1995: its pace net of the others' prompts prefilled meanwhile
                    # (those still prefilling now are not done yet)
                    # at their modelled cost those of tasks ended since, at their measured
                    # prefill those of tasks running (ORCH-2911), and not the stall in
                    # progress (ORCH-2909: ``pending`` below adds what is left of it)
                    first, last = t.run_first_token, t.last_token
                    done_last = (
                        log.between(first, last)
                        - undone.between(first, last)
                        - measured.between(first, last)
                    )
                    done_now = (
                        log.between(first, now)
                        - undone.between(first, math.inf)
                        - measured.between(first, now)
                    )
                    sq_last = (
                        log.squares(first, last)
                        - undone.squares(first, last)
                        - measured.squares(first, last)
                    )
                    sq_now = (
                        log.squares(first, now)
                        - undone.squares(first, math.inf)
                        - measured.squares(first, now)
                    )
                    net_last = (last - first - stalls.covered(first, last)) * 1000
                    net_now = (now - first - stalls_now.covered(first, now)) * 1000
                    # ORCH-2918: measured against the model at the busy slots it
                    # decoded beside (their mean over its chunks) and its context so
                    # far, not at the busy slots now: a task that decoded beside
                    # another that has ended is not slow, it was busier
                    so_far = t.engine_tokens - t.run_tokens_before
                    then = model.decode_ms_per_token(
                        t.busy_sum / t.run_chunks if t.run_chunks else busy_now,
                        now,
                        p,
                        _tokens_in(t) + t.run_tokens_before + so_far / 2,
                    )
                    pace = live_pace(  # ORCH-1977: the task's own pace so far
                        then,
                        so_far,
                        max(0.0, net_last - p.prefill_ms(done_last, sq_last)),
                        max(0.0, net_now - p.prefill_ms(done_now, sq_now)),
                        per,
                    )
                    if pace is not None:
                        ms = n * pace.ms_per_token
                        paces.append(pace)
                        pc = pace
                    ms += max(0.0, pending)  # it waits for those prompts (ORCH-1996)
                left.append(max(0.0, ms))
                if trace is not None:
                    ratio = (round(pc.ratio, 2), round(pc.weight, 2)) if pc else None
                    decoding = t.run_first_token is not None
                    trace_r.append((t.task_id[:8], n, decoding, ratio, round(ms)))
        out.append(ReplicaLoad(model, st.slots, left, replica_pace(paces), max(0.0, pending)))
    return out


_DISPATCH = st.tuples(
    st.just("dispatch"),
    st.integers(0, 1),  # replica
    st.integers(0, 3000),  # prompt tokens
    st.integers(1, 400),  # max_tokens
    st.one_of(st.none(), st.integers(0, 400)),  # expected_tokens
    st.booleans(),  # prompt counted at admission
)
_TOKENS = st.tuples(st.just("tokens"), st.integers(0, 63), st.integers(1, 40), st.integers(1, 8))
# dispatches and tokens drawn three times as often as ends: several tasks running at once
_STEP = st.one_of(
    _DISPATCH,
    _DISPATCH,
    _DISPATCH,
    st.tuples(st.just("first"), st.integers(0, 63)),
    st.tuples(st.just("first"), st.integers(0, 63)),
    _TOKENS,
    _TOKENS,
    _TOKENS,
    st.tuples(st.just("end"), st.integers(0, 63), st.sampled_from(list(Phase)[2:])),
    st.tuples(st.just("before"), st.integers(0, 63), st.integers(1, 3)),  # a preempted run
)


def _pool(w: Workload, slots: tuple[int, int]) -> SimpleNamespace:
    reps = {}
    for i, n in enumerate(slots):
        rid = f"p-e{i}"
        state = ReplicaState(pool_id="p", replica_id=rid, engine=ENGINE, status="ready", slots=n)
        reps[rid] = SimpleNamespace(state=state)
    pool = SimpleNamespace(id="p", engine=ENGINE, replicas=reps, queue=[])
    for rid, r in reps.items():
        w.model(pool, rid, r.state.slots)  # type: ignore[arg-type]
    return pool


def new_task(k: int, tin: int, max_tokens: int, expected: int | None, counted: bool) -> TaskRecord:
    """Task ``t{k}`` of the drives here and in ``test_model_cost_admission.py``: a prompt
    of ``tin`` tokens (counted at admission or not), its budget and expected tokens."""
    req = GenerateRequest(task_id=f"t{k}", prompt="x" * 9, max_tokens=max_tokens, seed=1)
    r = TaskRecord(f"t{k}", "p", ENGINE, "interactive", req, tin)
    r.prompt_counted, r.expected_tokens = counted, expected
    return r


def running_step(
    w: Workload,
    pool: SimpleNamespace,
    live: list[tuple[str, TaskRecord]],
    step: tuple[Any, ...],
    now: float,
) -> None:
    """One step of a running task (``first``, ``tokens``, ``before``, ``end``) of the
    drives here and in ``test_model_cost_admission.py``; other steps do nothing."""
    kind = step[0]
    rid, r = live[step[1] % len(live)]
    if kind == "first" and r.run_first_token is None:
        r.run_first_token = r.last_token = now
        r.engine_tokens += 1
    elif kind == "tokens" and r.run_first_token is not None:
        r.engine_tokens += step[2]
        r.last_token = now
        r.busy_sum += step[3] * step[2]
        r.run_chunks += step[2]
    elif kind == "before":
        r.run_tokens_before = min(r.engine_tokens, step[2])
    elif kind == "end":
        live.remove((rid, r))
        r.lifecycle.end(step[2], now)
        w.observe(pool, pool.replicas[rid], r, now)  # type: ignore[arg-type]
        w.ended("p", rid, r)


def _same(w: Workload, pool: SimpleNamespace, now: float) -> int:
    """Compares every query; returns the running tasks seen."""
    share = w._expect(pool, now, completed=False)  # type: ignore[arg-type]
    expects = [None] if share is None else [None, share, (share[0], now, True)]
    for expect in expects:
        tr_new: list[list[tuple[object, ...]]] = []
        tr_ref: list[list[tuple[object, ...]]] = []
        new = w.loads(pool, now, trace=tr_new, expect=expect)  # type: ignore[arg-type]
        ref = ref_loads(w, pool, now, trace=tr_ref, expect=expect)  # type: ignore[arg-type]
        assert new == ref  # ReplicaLoad's fields: the floats with ==, not approximately
        for a, b in zip(new, ref, strict=True):
            assert list(a.running_ms) == list(b.running_ms)
            assert (a.pace, a.prefill_ms) == (b.pace, b.prefill_ms)
        assert tr_new == tr_ref
        assert w.loads(pool, now, expect=expect) == new  # without a trace: the same
    return sum(len(r.running_ms) for r in new)


@settings(max_examples=250, deadline=None)
@given(
    st.lists(st.tuples(_STEP, st.floats(0.0, 3.0), st.booleans()), min_size=30, max_size=150),
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    st.floats(1.0, 80.0),
    st.floats(0.05, 20.0),
)
def test_loads_equal_9d35416_to_the_bit(steps, slots, decode_ms, prefill_ms):
    """ORCH-2940, ORCH-2941: after every step both give the same replica loads (ms left
    of each running task, pace, prefill in progress) and the same trace."""
    w = Workload()
    w._priors[ENGINE] = Prior(decode_ms_per_token=decode_ms, prefill_ms_per_token=prefill_ms)
    pool = _pool(w, slots)
    now, k = 100.0, 0
    live: list[tuple[str, TaskRecord]] = []
    for step, dt, query_between in steps:
        now += dt
        kind = step[0]
        if kind == "dispatch":
            _, i, tin, max_tokens, expected, counted = step
            k += 1
            r = new_task(k, tin, max_tokens, expected, counted)
            r.dispatched = now
            r.lifecycle.dispatch()
            rid = f"p-e{i}"
            w.started("p", rid, r)
            w.dispatched(pool, pool.replicas[rid], r, now)  # type: ignore[arg-type]
            live.append((rid, r))
        elif live:
            running_step(w, pool, live, step, now)
        if query_between:
            assert _same(w, pool, now) == len(live)
        assert _same(w, pool, now + dt / 3) == len(live)


def test_the_reference_is_not_the_code_under_test():
    assert ref_loads is not Workload.loads
    assert ref_loads.__module__ == __name__
