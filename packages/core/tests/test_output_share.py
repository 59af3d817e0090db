"""The expected output of the work ahead (ORCH-2921..2923): a learned share of the
token budget per pool, cancels counted for the slot they held, not for a finish."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.output_share import OutputShare


def _bench_like(share: OutputShare, runs: int, t: float = 0.0) -> float:
    """``runs`` runs 3 s apart of 108 tokens each; every tenth canceled after 13
    (`bench/calibration.py`'s 10 % of cancels after a few tokens); the others use
    their whole budget. Returns the clock after."""
    for n in range(runs):
        canceled = n % 10 == 9
        share.observe(13 if canceled else 108, 108, canceled=canceled, now=t)
        t += 3.0
    return t


def test_no_run_keeps_the_budget():
    """ORCH-1997's rule until a run ends: the whole budget less the tokens so far."""
    s = OutputShare()
    assert s.expected_left(108, 0, 0.0, completed=False) == 108
    assert s.expected_left(108, 13, 0.0, completed=True) == 95
    assert s.expected_left(108, 108, 0.0, completed=False) == 0


def test_cancels_shorten_the_slot_held_but_not_the_finish():
    """ORCH-2921/2922: 100 runs with one in ten canceled after 13 of 108 tokens. A slot
    ahead is held for the mean over every run (with the prior: 0.92 of the budget,
    99 tokens instead of 108); a task's own finish counts the completed runs only, all
    at their budget: 108. A task past the cancels' share (13 tokens) is expected to
    run to its budget (every run still going then used it all)."""
    s = OutputShare()
    t = _bench_like(s, 100)
    ahead = s.expected_left(108, 0, t, completed=False)
    assert 97 <= ahead <= 101, ahead
    assert s.expected_left(108, 0, t, completed=True) == 108
    assert s.expected_left(108, 20, t, completed=False) == 88


def test_an_engine_that_stops_early_is_learned_for_both():
    """Runs that end at EOS after half their budget (completed): both expectations
    move to about half, the prior of 4 pseudo-runs at the budget pulling a little."""
    s = OutputShare()
    t = 0.0
    for _ in range(200):
        s.observe(50, 100, canceled=False, now=t)
        t += 1.0
    for completed in (False, True):
        assert 50 <= s.expected_left(100, 0, t, completed=completed) <= 53


def test_without_fresh_runs_it_returns_to_the_budget():
    """ORCH-1954's decay, here ORCH-2921's: the samples' weight halves every
    half-life; after twelve half-lives (100 runs x 2^-12 < 1 % of the prior) they
    are forgotten and the budget is the forecast again."""
    s = OutputShare(half_life_s=60.0)
    t = 0.0
    for _ in range(100):
        s.observe(10, 100, canceled=True, now=t)
    assert s.expected_left(100, 0, t, completed=False) < 20
    assert 40 < s.expected_left(100, 0, t + 240.0, completed=False) < 100  # 100/16 runs
    assert s.expected_left(100, 0, t + 600.0, completed=False) < 100  # 0.1 run left
    assert s.expected_left(100, 0, t + 720.0, completed=False) == 100


_RUN = st.tuples(
    st.integers(min_value=-5, max_value=5000),  # tokens out (a stray negative too)
    st.integers(min_value=-1, max_value=4000),  # budget (0 and below are ignored)
    st.booleans(),  # canceled
    st.floats(min_value=-100.0, max_value=10_000.0, allow_nan=False),  # clock step
)


@settings(max_examples=300, deadline=None)
@given(
    runs=st.lists(_RUN, max_size=60),
    budget=st.integers(min_value=1, max_value=4000),
    so_far=st.integers(min_value=0, max_value=4000),
    later=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
)
def test_property_bounds_and_the_rule(
    runs: list[tuple[int, int, bool, float]], budget: int, so_far: int, later: float
) -> None:
    """ORCH-2923: any runs (budgets, tokens, outcomes, clocks that may go back): the
    expected tokens left are in [0, budget - so_far]; with every completed run at its
    budget the completed-only expectation is the budget left whatever the cancels;
    once the samples decay below 1 % of the prior, the rule again."""
    s = OutputShare(half_life_s=600.0)
    t = 0.0
    all_at_budget = True
    for out, b, canceled, step in runs:
        t += step
        s.observe(out, b, canceled=canceled, now=t)
        if b > 0 and not canceled and out < b:
            all_at_budget = False
    left = max(0, budget - so_far)
    for completed in (False, True):
        e = s.expected_left(budget, so_far, t, completed=completed)
        assert 0 <= e <= left
    if all_at_budget:
        assert s.expected_left(budget, so_far, t, completed=True) == left
    # 60 runs of weight <= 1 each: 2^-14 x 60 < 1 % of the prior of 4
    forgotten = t + max(0.0, later) + 14 * 600.0
    for completed in (False, True):
        assert s.expected_left(budget, so_far, forgotten, completed=completed) == left
