"""The service-time model and the forecasts built on it (ORCH-1950..1959)."""

from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st
from llama_orch.core.eta import Job, ReplicaLoad, admits, best_slot, simulate
from llama_orch.core.predict import DrainRate
from llama_orch.core.servicetime import Observation, Prior, ServiceModel


def _model(slots: int = 2, **prior: float) -> ServiceModel:
    return ServiceModel(Prior(**prior), half_life_s=600.0, slots=slots)


def test_model_recovers_its_four_parts():
    """ORCH-1950/1952: overhead, prefill, decode and slowdown learned separately."""
    m = _model(slots=4)
    t = 0.0
    for n in range(200):
        tokens_in = 10 + (n * 37) % 900
        busy = 1 + n % 4
        ttft = 30.0 + 0.5 * tokens_in
        pace = 8.0 * (1 + 0.5 * (busy - 1))
        tokens = 5 + n % 50
        m.observe(Observation(tokens_in, ttft, pace * (tokens - 1), tokens, busy, "completed"), t)
        t += 0.5
    p = m.params(t)
    assert math.isclose(p.overhead_ms, 30.0, rel_tol=0.05), p
    assert math.isclose(p.prefill_ms_per_token, 0.5, rel_tol=0.05), p
    assert math.isclose(p.decode_ms_per_token, 8.0, rel_tol=0.05), p
    assert math.isclose(p.slowdown, 0.5, rel_tol=0.1), p
    assert math.isclose(m.service_ms(100, 11, 1, t), 30 + 50 + 80, rel_tol=0.05)


def test_short_tasks_do_not_inflate_the_per_token_rate():
    """ORCH-1952, issue #19's lockout in miniature: 4-token tasks whose first token
    is slow (contention, per-task overhead) raise the overhead, not the decode rate;
    the old total-time / tokens average predicted a 48-token task far too slow."""
    m, old = _model(slots=2), DrainRate(slots=4)
    for i in range(11):
        ttft, pace = 1500.0, 10.0  # a slow first token, then 10 ms per token
        m.observe(Observation(20, ttft, pace * 3, 4, 2.0, "completed"), float(i))
        old.observe(int(ttft + 3 * pace), 4)
    idle = m.service_ms(20, 48, 1, 11.0)
    assert idle < 1500 + 48 * 10 * 1.1, idle
    assert old.decode_ms(48) > 5 * idle  # what the total-time / tokens rate predicted


def test_outliers_move_the_fit_a_bounded_amount_and_failures_nothing():
    """ORCH-1951/1952: one 100x decode sample after many good ones barely moves the
    rate; failed runs are ignored; canceled runs count their pace."""
    m = _model()
    for i in range(30):
        m.observe(Observation(50, 40.0, 10.0 * 19, 20, 1.0, "completed"), float(i))
    before = m.decode_ms_per_token(1, 30.0)
    m.observe(Observation(50, 40.0, 1000.0 * 19, 20, 1.0, "completed"), 30.0)
    assert m.decode_ms_per_token(1, 30.0) < before * 1.5
    n = m.observations
    m.observe(Observation(50, 9e9, 9e9, 20, 1.0, "failed"), 31.0)
    assert m.observations == n and m.decode_ms_per_token(1, 31.0) < before * 1.5
    m.observe(Observation(50, 40.0, 10.0 * 2, 3, 1.0, "canceled"), 32.0)
    assert m.observations == n + 1


def test_decays_toward_the_prior_without_samples():
    """ORCH-1954: the samples' weight halves every half-life, the prior's does not."""
    m = ServiceModel(Prior(decode_ms_per_token=40.0), half_life_s=10.0, slots=1)
    for i in range(5):
        m.observe(Observation(10, 20.0, 5.0 * 9, 10, 1.0, "completed"), float(i))
    fresh = m.decode_ms_per_token(1, 5.0)
    assert fresh < 8
    later = m.decode_ms_per_token(1, 5.0 + 200.0)
    assert later > 35  # 20 half-lives later the prior dominates
    assert math.isclose(ServiceModel(Prior(), slots=1).decode_ms_per_token(1, 0.0), 25.0)


def test_simulate_assigns_queued_work_to_the_earliest_slot():
    """ORCH-1957: slots free after running work; queued jobs in order; busy counts."""
    flat = _model(slots=2, overhead_ms=0.0, prefill_ms_per_token=0.0, decode_ms_per_token=10.0)
    flat_slowdown = flat.params(0.0).slowdown
    r = ReplicaLoad(flat, 2, [100.0])
    got = simulate([r], [Job(0, 11), Job(0, 11)], 0.0)
    assert got is not None
    busy2 = 10.0 * (1 + flat_slowdown) * 10
    assert got[0].start_ms == 0.0 and math.isclose(got[0].finish_ms, busy2)
    assert got[1].start_ms == 100.0  # the running task's slot
    assert simulate([], [Job(0, 1)], 0.0) is None
    idle = best_slot([ReplicaLoad(flat, 2, [])], [], Job(0, 11), 0.0)
    assert idle is not None and idle.start_ms == 0 and math.isclose(idle.finish_ms, 100.0)


def test_a_started_prompt_delays_the_replicas_other_work_and_the_next_prompt():
    """ORCH-1996: llama-server prefills a replica's prompts one after another while
    its decoding slots wait. A job started on an idle slot delays the running task's
    slot by its prefill (the next queued job starts that much later); a prefill in
    progress (``prefill_ms``) delays a new job's first token; an idle replica with
    nothing prefilling is forecast as before."""
    m = _model(slots=2, overhead_ms=0.0, prefill_ms_per_token=5.0, decode_ms_per_token=10.0)
    slow = m.params(0.0).slowdown
    r = ReplicaLoad(m, 2, [1000.0])
    got = simulate([r], [Job(200, 201), Job(0, 2)], 0.0)
    assert got is not None
    # the first job: its 1000 ms prefill, then 200 tokens at two busy slots
    assert got[0].start_ms == 0.0
    assert math.isclose(got[0].finish_ms, 1000.0 + 200 * 10.0 * (1 + slow))
    # the running task's slot frees 1000 ms later than its own forecast (was 1000.0)
    assert math.isclose(got[1].start_ms, 2000.0)
    pending = ReplicaLoad(m, 2, [], prefill_ms=700.0)
    one = best_slot([pending], [], Job(100, 1), 0.0)
    assert one is not None and one.start_ms == 0.0  # dispatched now ...
    assert math.isclose(one.finish_ms, 700.0 + 500.0)  # ... first token after the others'
    idle = best_slot([ReplicaLoad(m, 2, [])], [], Job(100, 1), 0.0)
    assert idle is not None and math.isclose(idle.finish_ms, 500.0)


_obs = st.builds(
    Observation,
    tokens_in=st.integers(0, 4000),
    ttft_ms=st.none() | st.floats(0, 1e6, allow_nan=False),
    decode_ms=st.floats(0, 1e7, allow_nan=False),
    tokens_out=st.integers(0, 2000),
    busy=st.floats(0, 16, allow_nan=False),
    outcome=st.sampled_from(["completed", "canceled", "failed"]),
    # others' prompts before its first token, in prompts of arbitrary sizes (ORCH-2900)
    ahead=st.integers(0, 4000),
    ahead_sq=st.none() | st.integers(0, 16_000_000),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_obs, st.floats(0, 5000, allow_nan=False)), max_size=40),
    st.integers(1, 8),
    st.integers(0, 3000),
    st.integers(1, 1000),
    st.floats(0, 1e5, allow_nan=False),
)
# ORCH-2925: found on the merged tree of session 13 (ORCH-2924 learns a first sample
# unclipped): a first run with no known prompt of its own (tokens_in 0) but 132 tokens
# of others' prompts ahead raised the per-token cap past ORCH-1953's prefill_max
@example(
    [
        (Observation(0, 39218.0, 0.0, 0, 0.0, "completed", ahead=132), 0.0),
    ],
    1,
    202,
    1,
    0.0,
)
def test_idle_forecast_is_bounded_by_measurements_and_admitted(history, slots, p, t, later):
    """ORCH-1953 (no lockout by construction): whatever was observed, the forecast
    finish of a task on an idle replica is at most ttft_max + P x prefill_max +
    (T - 1) x decode_max of what was measured (prior included), and a deadline at that
    bound is admitted (ORCH-1958)."""
    prior = Prior()
    m = ServiceModel(prior, half_life_s=300.0, slots=slots)
    ttft_max = max(prior.overhead_ms, prior.overhead_ms + 256 * prior.prefill_ms_per_token)
    prefill_max = prior.prefill_ms_per_token
    full = prior.decode_ms_per_token * (1 + prior.slowdown * max(1, slots - 1))
    decode_max = max(prior.decode_ms_per_token, full)
    now = 0.0
    for obs, dt in history:
        now += dt
        m.observe(obs, now)
        # what a measurement can raise the bound to (clipped samples are lower still)
        if obs.outcome != "failed":
            if obs.ttft_ms is not None:
                ttft_max = max(ttft_max, obs.ttft_ms)
                if obs.tokens_in > 0:
                    prefill_max = max(prefill_max, obs.ttft_ms / obs.tokens_in)
            need = 2 if obs.outcome == "completed" else 3
            if obs.tokens_out >= need and obs.decode_ms > 0:
                decode_max = max(decode_max, obs.decode_ms / (obs.tokens_out - 1))
    now += later
    slot = best_slot([ReplicaLoad(m, slots, [])], [], Job(p, t), now)
    assert slot is not None and slot.start_ms == 0.0
    bound = ttft_max + p * prefill_max + (t - 1) * decode_max
    assert slot.finish_ms <= bound * (1 + 1e-9) + 1e-6
    assert admits(slot.finish_ms, math.ceil(bound) + 1, margin=0.2)
    assert admits(slot.finish_ms, slot.finish_ms, margin=0.0)


def _interfered(m: ServiceModel, *, account: bool) -> None:
    """A replica whose runs are delayed by other tasks' prompts: the first token by
    the ``ahead`` tokens, the decode by ``co_prefill`` tokens at the same 4 ms each."""
    t = 0.0
    for n in range(300):
        tokens_in = 20 + (n * 53) % 600
        ahead = (n * 71) % 3 * 400  # 0, 400 or 800 prompt tokens of others first
        co = (n * 29) % 4 * 300  # 0-900 prompt tokens of others while it decodes
        tokens = 10 + n % 40
        ttft = 40.0 + 4.0 * (tokens_in + ahead)
        decode = 20.0 * (tokens - 1) + 4.0 * co
        m.observe(
            Observation(
                tokens_in,
                ttft,
                decode,
                tokens,
                1.0,
                "completed",
                ahead=ahead if account else 0,
                co_prefill=co if account else 0,
            ),
            t,
        )
        t += 0.5


def test_other_tasks_prefill_is_learned_apart_from_the_tasks_own_parts():
    """ORCH-1990/1991: with the interference told, the model recovers the engine's
    own prefill and decode costs; without it, both are biased (the calibration bench
    under-predicted long prompts 3-5x while over-predicting short ones)."""
    told, blind = _model(slots=4), _model(slots=4)
    _interfered(told, account=True)
    _interfered(blind, account=False)
    p, q = told.params(150.0), blind.params(150.0)
    assert math.isclose(p.prefill_ms_per_token, 4.0, rel_tol=0.1), p
    assert math.isclose(p.decode_ms_per_token, 20.0, rel_tol=0.1), p
    assert math.isclose(p.overhead_ms, 40.0, rel_tol=0.5), p
    assert q.decode_ms_per_token > 1.5 * p.decode_ms_per_token, q
    assert q.overhead_ms > 10 * p.overhead_ms, q  # the others' prefill landed here
    # a 1,000-token prompt behind 800 tokens of others, alone on its replica
    assert math.isclose(told.service_ms(1000, 1, 1, 150.0, ahead=800), 40 + 4 * 1800, rel_tol=0.1)
    # runs that waited for others' prompts a little are learned net of it; runs that
    # mostly waited (correction > half the decode) are not learned from at all
    for i in range(100):
        now = 150.0 + i
        told.observe(
            Observation(50, 240.0, 20.0 * 40 + 4.0 * 50, 41, 1.0, "completed", co_prefill=50), now
        )
        told.observe(
            Observation(50, 240.0, 20.0 * 9 + 4.0 * 900, 10, 1.0, "completed", co_prefill=900), now
        )
    assert math.isclose(told.params(250.0).decode_ms_per_token, 20.0, rel_tol=0.05)


def test_the_dispatch_log_counts_others_prompts_between_two_instants():
    """ORCH-1990: the prompt tokens dispatched to the replica in ``(t0, t1]``; a run's
    own dispatch at ``t0`` is not counted; forecasts are unchanged by the log alone."""
    m = ServiceModel(Prior(100.0, 5.0, 20.0, 0.0), half_life_s=600.0, slots=4)
    before = m.service_ms(200, 11, 2, 0.0)
    for i in range(6):
        m.dispatched(1000, float(i))
    assert m.prompt_tokens_between(0.0, 5.0) == 5000
    assert m.prompt_tokens_between(-1.0, 0.0) == 1000
    index = m.prompt_index()  # the same counts, O(log) a query (issue #20)
    for t0, t1 in [(0.0, 5.0), (-1.0, 0.0), (-5.0, 100.0), (2.5, 2.5), (3.0, 1.0), (0.5, 3.5)]:
        assert index.between(t0, t1) == m.prompt_tokens_between(t0, t1), (t0, t1)
    assert m.service_ms(200, 11, 2, 10.0) == before
    assert math.isclose(m.service_ms(200, 11, 2, 10.0, ahead=800), before + 5 * 800)
    # the sums of the prompts' squared sizes too (ORCH-2900)
    assert m.prompt_squares_between(0.0, 5.0) == 5 * 1000**2
    for t0, t1 in [(0.0, 5.0), (-1.0, 0.0), (-5.0, 100.0), (2.5, 2.5), (3.0, 1.0), (0.5, 3.5)]:
        assert index.squares(t0, t1) == m.prompt_squares_between(t0, t1), (t0, t1)


def _superlinear(m: ServiceModel, *, batched: bool) -> float:
    """A replica whose prefill grows faster than linearly, as llama-server's does
    (session 6: 5.1-6.1 ms a token under 300 tokens, 6.2-7.1 at 1,000-1,900): a
    prompt of n tokens takes 5 n + 0.0007 n^2 ms; ``batched``: each first token also
    waited for two others' prompts of 300 tokens. Returns the clock after."""
    t = 0.0
    for n in range(120):
        tokens_in = 10 + (n * 389) % 1900
        ahead = 600 if batched and n % 2 else 0
        squares = tokens_in**2 + (2 * 300**2 if ahead else 0)
        ttft = 40.0 + 5.0 * (tokens_in + ahead) + 0.0007 * squares
        m.observe(
            Observation(
                tokens_in, ttft, 20.0 * 9, 10, 1.0, "completed",
                ahead=ahead, ahead_sq=2 * 300**2 if ahead else None,
            ),
            t,
        )  # fmt: skip
        t += 10.0  # the first samples, clipped against the prior's line, fade
    return t


def test_prefill_learns_its_growth_with_the_prompts_square():
    """ORCH-2900: the first-token curve has a squared prompt-size term learned like
    the linear one, each prompt of a batch counted by its own square: long prompts
    are no longer forecast at 0.56-0.69x (session 6's linear fit), and a linear
    engine keeps a straight line."""
    for batched in (False, True):
        m = _model(slots=4)
        t = _superlinear(m, batched=batched)
        p = m.params(t)
        assert math.isclose(p.prefill_quad, 0.0007, rel_tol=0.2), (batched, p)
        for n in (50, 300, 1000, 1900):
            want = 40.0 + 5.0 * n + 0.0007 * n * n
            assert math.isclose(m.ttft_ms(n, t), want, rel_tol=0.05, abs_tol=30), (batched, n, p)
        # two prompts of 900 batched are not one of 1,800
        two = m.service_ms(900, 1, 1, t, ahead=900, ahead_sq=900**2)
        assert math.isclose(two, 40.0 + 5.0 * 1800 + 0.0007 * 2 * 900**2, rel_tol=0.05)
    straight = _model(slots=4)
    for n in range(120):
        tokens_in = 10 + (n * 389) % 1900
        straight.observe(
            Observation(tokens_in, 40.0 + 5.0 * tokens_in, 180.0, 10, 1.0, "completed"), 10.0 * n
        )
    q = straight.params(1200.0)
    # (the first samples, clipped against the prior's line, leave a trace of a curve:
    # an order of magnitude below the curved engine's)
    assert q.prefill_quad < 0.0001, q
    for n in (50, 1900):
        assert math.isclose(straight.ttft_ms(n, 1200.0), 40 + 5.0 * n, rel_tol=0.03, abs_tol=30)


def test_the_squared_term_never_forecasts_beyond_the_slowest_prompt_seen():
    """ORCH-2900 within ORCH-1953: beyond the prompts measured, the curve is capped at
    the largest first-token time per prompt token seen, so an idle replica's forecast
    keeps its bound; the serial prefill of a job (ORCH-1996) is the same capped cost."""
    m = _model(slots=4)
    t = _superlinear(m, batched=False)
    p = m.params(t)
    slowest = max(
        (40.0 + 5.0 * n + 0.0007 * n * n) / n for n in (10 + (k * 389) % 1900 for k in range(120))
    )
    assert p.prefill_cap >= slowest * 0.999
    huge = 100_000
    assert m.ttft_ms(huge, t) <= p.overhead_ms + huge * p.prefill_cap * (1 + 1e-9)
    assert 40.0 + 5.0 * huge + 0.0007 * huge**2 > 2 * m.ttft_ms(huge, t)  # the cap bit
    r = ReplicaLoad(m, 2, [10_000.0])
    got = simulate([r], [Job(1500, 2000), Job(0, 1)], t)
    assert got is not None
    assert math.isclose(got[1].start_ms, 10_000.0 + p.prefill_ms(1500), rel_tol=1e-9)


def test_decode_slows_with_the_context_and_stays_bounded():
    """ORCH-2901: llama-server's decode slows as the cache grows (session 6's logs,
    one stream: 19-20 ms a token at 100-200 tokens of context, 25-26 at 600-1,100,
    34-35 at 1,700); the decode line learns that growth with its mean context (prompt
    and half its output) beside the busy slots' slowdown, and an idle replica's pace
    at any context stays at most the slowest pace measured at any busy count
    (``decode_max`` of ORCH-1953)."""
    m = _model(slots=4)
    t = 0.0
    slowest = 0.0
    for n in range(160):
        tokens_in = 10 + (n * 389) % 1900
        tokens = 5 + (n * 53) % 300
        busy = 1 + n % 4
        context = tokens_in + (tokens - 1) / 2
        pace = 19.0 + 0.0095 * context + 19.0 * 0.3 * (busy - 1)
        slowest = max(slowest, pace)
        ttft = 40.0 + 5.0 * tokens_in
        m.observe(Observation(tokens_in, ttft, pace * (tokens - 1), tokens, busy, "completed"), t)
        t += 10.0
    p = m.params(t)
    assert math.isclose(p.decode_ctx, 0.0095, rel_tol=0.15), p
    assert math.isclose(p.slowdown, 0.3, rel_tol=0.15), p
    for tokens_in, tokens in ((50, 100), (1800, 60)):
        want = (
            40 + 5.0 * tokens_in + (tokens - 1) * (19.0 + 0.0095 * (tokens_in + (tokens - 1) / 2))
        )
        assert math.isclose(m.service_ms(tokens_in, tokens, 1, t), want, rel_tol=0.06), (
            tokens_in,
            p,
        )
    decode_max = max(slowest, 25.0 * (1 + 0.25 * 3))  # measured, or the prior's
    assert m.decode_ms_per_token(1, t, context=1e6) <= decode_max * (1 + 1e-9)
    assert 19.0 + 0.0095 * 1e6 > 100 * decode_max  # the cap bit


def test_params_at_one_instant_are_computed_once_and_relearned():
    """Issue #20's admission cost: a forecast asks a model's parameters once per
    simulated job at one instant, so they are kept for that instant; a run learned at
    that same instant (the ttft sample, then the decode net of its prefill) is seen."""
    m = _model(slots=2)
    before = m.params(5.0)
    assert m.params(5.0) is before
    for _ in range(6):
        m.observe(Observation(100, 2000.0, 50.0 * 9, 10, 1.0, "completed", co_prefill=1), 5.0)
    after = m.params(5.0)
    assert after is not before and after.overhead_ms > 10 * before.overhead_ms
    # the decode learned net of the prefill cost just learned (after the 5th sample)
    assert after.samples > 0 and after.decode_ms_per_token > before.decode_ms_per_token


class _SmallLog(ServiceModel):
    DISPATCHES = 5  # a short log, so that evictions and compactions happen often


_times = st.integers(0, 40).map(lambda i: i / 4)  # ties on purpose
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("dispatch"), _times, st.integers(-3, 700)),
        st.tuples(st.just("query"), _times, _times),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=_ops, ordered=st.booleans())
def test_the_dispatch_log_index_equals_a_sum_over_its_last_entries(ops, ordered):
    """ORCH-2767: the index that dispatches update in place answers as a sum over the
    log's last ``DISPATCHES`` entries in dispatch order, with dispatches and queries
    interleaved, in time order (the incremental path) or not (the rebuilt one)."""
    m = _SmallLog(Prior(100.0, 5.0, 20.0, 0.0), half_life_s=600.0, slots=2)
    log: list[tuple[float, int]] = []
    clock = 0.0
    for kind, a, b in ops:
        if kind == "dispatch":
            t = clock + a if ordered else a
            clock = t
            m.dispatched(int(b), t)
            log.append((t, max(0, int(b))))
            continue
        t0, t1 = (a, b) if not ordered else (a * 4, b * 4)
        last = log[-_SmallLog.DISPATCHES :]
        want = sum(n for t, n in last if t0 < t <= t1)
        want_sq = sum(n * n for t, n in last if t0 < t <= t1)
        index = m.prompt_index()
        assert m.prompt_tokens_between(t0, t1) == index.between(t0, t1) == want
        assert m.prompt_squares_between(t0, t1) == index.squares(t0, t1) == want_sq
