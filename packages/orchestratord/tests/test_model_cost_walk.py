"""ORCH-2953: the admission forecast's shortcut (``quick_slot``) walks the running tasks
once, ``ModelParams.prefill_ms`` inline: against 466ee71's forecast (``ref_predicted``)
where the prefill in progress is what the forecast waits for, at a learned prefill pace
that is not 1 (the case the shortcut's inline terms all enter, ORCH-2940)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from llama_orch.core.servicetime import DEFAULT_PRIOR, Observation, Prior
from llama_orch.orchestratord import _quick_forecast
from llama_orch.orchestratord import workload as workload_mod
from llama_orch.orchestratord.workload import Workload

from .test_model_cost_admission import ENGINE, _pool, ref_predicted
from .test_model_cost_loads import new_task


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 3000), st.floats(1.0, 9e4)), min_size=3, max_size=6),
    st.lists(  # running tasks: prompt tokens, dispatched s before, prefill ahead at dispatch
        st.tuples(st.integers(0, 3000), st.floats(0.001, 0.5), st.integers(0, 4000)),
        min_size=1,
        max_size=5,
    ),
    st.integers(0, 3000),  # the admitted task's prompt
    st.integers(1, 400),  # its max_tokens
    st.floats(0.05, 20.0),  # the prior's prefill ms a token
)
def test_the_shortcut_at_a_learned_pace_is_the_simulation(
    runs, running, tin, max_tokens, prefill_ms
):
    """A replica that learned first tokens (its prefill pace moves off 1), runs tasks that
    are all prefilling, and admits one: the shortcut gives the forecast (checked), equal
    to the reference's to the bit."""
    w = Workload()
    w._priors[ENGINE] = Prior(prefill_ms_per_token=prefill_ms)
    pool = _pool(w, (8,))
    model = w.model(pool, "p-e0", 8)  # type: ignore[arg-type]
    now = 100.0
    for n, ttft in runs:  # first tokens slower or faster than the prior says
        now += 1.0
        model.observe(Observation(n, ttft, 0.0, 1, 1.0, "completed"), now)
    assume(model.params(now).prefill_pace != 1.0)  # the runs disagree with the line
    for k, (n, before, ahead) in enumerate(running):
        r = new_task(k, n, 1, None, True)
        pool.queue.push(r, "interactive")
        pool.queue.pop()
        r.dispatched = now - before
        r.lifecycle.dispatch()
        w.started("p", "p-e0", r)
        r.run_prefill_ahead, r.run_prefill_ahead_sq = ahead, ahead * ahead
    rec = new_task(99, tin, max_tokens, None, True)
    pool.queue.push(rec, "interactive")
    taken = []
    quick = _quick_forecast.quick_slot

    def spy(*args):  # type: ignore[no-untyped-def]
        got = quick(*args)
        taken.append(got is not None)
        return got

    workload_mod.quick_slot = spy  # what ``Workload._forecast`` calls
    try:
        got = w.predicted(pool, rec, now)[0]  # type: ignore[arg-type]
    finally:
        workload_mod.quick_slot = quick
    assert got == ref_predicted(w, pool, rec, now)  # type: ignore[arg-type]
    assert taken == [True]  # all prefilling, for at least a ms each: a prefill in progress


def test_a_learned_pace_is_not_one():
    """The property above runs at a measured prefill pace other than 1 (ORCH-2913)."""
    w = Workload()
    model = w.model(_pool(w, (8,)), "p-e0", 8)  # type: ignore[arg-type]
    for k, (n, ttft) in enumerate(((500, 9000.0), (20, 300.0), (2000, 900.0))):
        model.observe(Observation(n, ttft, 0.0, 1, 1.0, "completed"), 101.0 + k)
    assert model.params(103.0).prefill_pace != 1.0


def test_the_default_prior_is_shared_and_frozen():
    """ORCH-2955: a model without a prior of its engine's starts from one ``Prior()``
    built once; sharing it is safe because it cannot change, and a seeded engine's
    model is rebuilt from its own (ORCH-1954)."""
    w = Workload()
    pool = _pool(w, (2,))
    model = w.model(pool, "p-e0", 2)  # type: ignore[arg-type]
    assert model.prior is DEFAULT_PRIOR and DEFAULT_PRIOR == Prior()
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_PRIOR.weight = 1.0  # type: ignore[misc]
    assert w.prior(ENGINE) is DEFAULT_PRIOR
    w.seed(ENGINE, decode_ms=9.0)
    seeded = w.model(pool, "p-e0", 2)  # type: ignore[arg-type]
    assert seeded is not model and seeded.prior == Prior(decode_ms_per_token=9.0)
    assert DEFAULT_PRIOR == Prior()
