"""A replica's measured prefill pace (ORCH-2913) and a prompt past its forecast
(ORCH-2914): what issue #19's held finish ETA missed most (ORCH-2912)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core._prefill_pace import PrefillPace
from llama_orch.core.eta import Job, ReplicaLoad, prefill_left, simulate
from llama_orch.core.servicetime import ModelParams, Observation, Prior, ServiceModel


def _engine(m: ServiceModel, t: float, runs: int, ms_per_token: float) -> float:
    """``runs`` runs 10 s apart (the calibration bench's pace of runs) of prompts of
    100-1,900 tokens whose first token takes 40 ms + ``ms_per_token`` a prompt token.
    Returns the clock after."""
    for n in range(runs):
        tokens_in = 100 + (n * 389) % 1800
        ttft = 40.0 + ms_per_token * tokens_in
        m.observe(Observation(tokens_in, ttft, 20.0 * 9, 10, 1.0, "completed"), t)
        t += 10.0
    return t


def _learned(ms_per_token: float = 5.0) -> tuple[ServiceModel, float]:
    m = ServiceModel(Prior(overhead_ms=40.0, prefill_ms_per_token=ms_per_token), slots=4)
    return m, _engine(m, 0.0, 60, ms_per_token)


def test_a_replica_whose_prompts_run_slower_than_modelled_is_forecast_at_its_pace():
    """ORCH-2913: 60 runs at 5 ms a prompt token, then the machine gets loaded and the
    next prompts take 1.5x as long. The first-token line, whose residuals are clipped
    (ORCH-1951), still forecasts about 5 ms a token (0.68x the prefill they take);
    with the measured pace a 1,500-token prompt's forecast is 0.84x the 11.3 s it now
    takes after 2 minutes of such runs and 0.93x after 4, and every prefill cost of
    a forecast follows it (the serial prefill of ORCH-1996)."""
    m, t = _learned()
    assert math.isclose(m.prefill_pace(t), 1.0, rel_tol=0.02)
    t = _engine(m, t, 12, 7.5)
    slow = 40.0 + 7.5 * 1500
    assert m.prefill_pace(t) > 1.2
    assert m.ttft_ms(1500, t) >= 0.8 * slow, (m.ttft_ms(1500, t), slow, m.params(t))
    t = _engine(m, t, 12, 7.5)
    p = m.params(t)
    assert p.prefill_pace > 1.3, p
    assert 0.9 * slow <= m.ttft_ms(1500, t) <= 1.1 * slow, (m.ttft_ms(1500, t), slow, p)
    # the line alone (unpaced) is far below: the pace is what moved
    assert p._replace(prefill_pace=1.0).prefill_ms(1500) < 0.75 * (slow - 40.0)
    # a job started beside a running task delays it by that paced prefill (ORCH-1996)
    got = simulate([ReplicaLoad(m, 2, [20_000.0])], [Job(1500, 2000), Job(0, 1)], t)
    assert got is not None
    assert math.isclose(got[1].start_ms, 20_000.0 + p.prefill_ms(1500), rel_tol=1e-9)


def test_the_pace_decays_back_to_the_model_and_stays_bounded():
    """ORCH-2913: without fresh runs the measured pace returns to 1 (its sums halve
    every 120 s against a fixed prior); however slow the prompts measured, it is at
    most 3 and a prefill at most ``prefill_cap`` a token (ORCH-1953)."""
    m, t = _learned()
    t = _engine(m, t, 24, 7.5)
    assert m.prefill_pace(t) > 1.3
    assert math.isclose(m.prefill_pace(t + 20 * 120.0), 1.0, rel_tol=0.01)
    t = _engine(m, t + 20 * 120.0, 30, 500.0)  # 100x slower prompts
    p = m.params(t)
    assert 1.0 < p.prefill_pace <= 3.0
    assert p.prefill_ms(100_000) <= p.prefill_cap * 100_000 * (1 + 1e-12)
    fast, t = _learned()
    t = _engine(fast, t, 30, 0.05)  # 100x faster
    assert 0.5 <= fast.prefill_pace(t) < 1.0


def test_failed_runs_and_runs_without_a_first_token_do_not_move_the_pace():
    """ORCH-2913: only runs with a first token (completed or canceled) count."""
    m, t = _learned()
    before = m.prefill_pace(t)
    m.observe(Observation(1000, 50_000.0, 0.0, 0, 1.0, "failed"), t)
    m.observe(Observation(1000, None, 0.0, 0, 1.0, "canceled"), t)
    assert m.prefill_pace(t) == before
    m.observe(Observation(1000, 50_000.0, 0.0, 1, 1.0, "canceled"), t)
    assert m.prefill_pace(t) > before


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 1e6, allow_nan=False), st.floats(0, 1e6), st.floats(0, 1e6))
def test_a_prompt_past_its_forecast_moves_its_first_token_later(forecast, e1, de):
    """ORCH-2914: until 1/1.1 of its forecast a prompt's first token is told at its
    forecast; then at 1.1x the time it has run, so the instant told moves 1.1 s later
    a second and never slides with the clock or falls before now or the forecast."""
    e2 = e1 + de
    left1, left2 = prefill_left(forecast, e1), prefill_left(forecast, e2)
    assert left1 >= 0.0 and left2 >= 0.0
    assert e1 + left1 >= forecast - 1e-6 * max(1.0, forecast)
    if 1.1 * e1 <= forecast:
        assert math.isclose(left1, forecast - e1, rel_tol=1e-12, abs_tol=1e-9)
    else:
        assert math.isclose(e1 + left1, 1.1 * e1, rel_tol=1e-12)
        assert math.isclose((e2 + left2) - (e1 + left1), 1.1 * de, rel_tol=1e-9, abs_tol=1e-6)
    assert e2 + left2 >= e1 + left1 - 1e-6  # the instant told never moves earlier


def _measured_by_calls(
    pace: PrefillPace, overhead_ms: float, p: ModelParams
) -> tuple[float, float, float] | None:
    """ORCH-2796's reference: the sums with ``ModelParams.prefill_ms`` called per run
    (unpaced), as ``PrefillPace.measure`` computed them before."""
    runs = list(pace._runs)
    if not runs:
        return None
    unpaced = p._replace(prefill_pace=1.0)
    latest = max(t for t, _, _, _ in runs)
    measured = modelled = 0.0
    for t, y, n, sq in runs:
        k = math.pow(0.5, (latest - t) / PrefillPace.HALF_LIFE_S)
        measured += k * (y - overhead_ms)
        modelled += k * unpaced.prefill_ms(n, sq)
    return (max(0.0, measured), modelled, latest)


_ms = st.floats(0.0, 1e4, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.floats(0.0, 1e5), _ms, st.integers(0, 50_000), st.integers(0, 10**9)),
        max_size=PrefillPace.RUNS + 20,
    ),
    overhead=_ms,
    per_token=st.floats(0.0, 50.0),
    quad=st.floats(0.0, 1e-2),
    cap=st.one_of(st.just(math.inf), st.floats(0.0, 100.0)),
    pace=st.floats(0.5, 3.0),
)
def test_the_inline_measure_equals_prefill_ms_per_run_to_the_bit(
    runs: list[tuple[float, float, int, int]],
    overhead: float,
    per_token: float,
    quad: float,
    cap: float,
    pace: float,
) -> None:
    """ORCH-2796: the sums are exactly those of ``ModelParams.prefill_ms`` per run
    (any pace in the params: the line is measured unpaced), infinite cap included."""
    pp = PrefillPace()
    for now, ttft, n, sq in runs:
        pp.add(now, ttft, n, sq)
    params = ModelParams(
        overhead, per_token, 1.0, 0.5, 1.0, prefill_quad=quad, prefill_cap=cap,
        prefill_pace=pace,
    )  # fmt: skip
    pp.measure(overhead, per_token, quad, cap)
    assert pp.sums() == _measured_by_calls(pp, overhead, params)  # ORCH-2951: read
