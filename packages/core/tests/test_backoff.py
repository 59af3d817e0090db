"""Retry turns as promises (ORCH-1970..1975) and the live pace of running tasks (ORCH-1977)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.backoff import (
    DUE_LATE_S,
    MAX_PROMISE_S,
    MIN_GAP_MS,
    MIN_RENEWAL_MS,
    MIN_RETRY_MS,
    RENEWAL_GROWTH,
    RETRY_MARGIN,
    Promise,
    PromiseBook,
    retry_turn,
)
from llama_orch.core.eta import Job, ReplicaLoad, live_pace, replica_pace, simulate
from llama_orch.core.servicetime import Prior, ServiceModel

SHORT = Job(38, 4)


def _load(slots: int = 2, running: tuple[float, ...] = (), pace: float = 1.0) -> ReplicaLoad:
    model = ServiceModel(
        Prior(overhead_ms=200.0, decode_ms_per_token=50.0, slowdown=0.0), slots=slots
    )
    return ReplicaLoad(model, slots, list(running), pace)


def _refuse(book: PromiseBook, loads, queued, capacity, job, now) -> tuple[Promise, float]:
    """What orchestratord does on a refusal by a full queue (Workload.retry_after_ms)."""
    renewing = book.take_due(now)
    turn = retry_turn(
        loads, queued, len(queued), book.outstanding(now), job, capacity, now, renewing=renewing
    )
    assert turn is not None
    book.add(turn[0])
    return turn


def test_a_burst_is_spread_over_the_places_that_open():
    """ORCH-1970/1972: capacity 1, 2 slots busy for 3 s and 5 s, one 96-token task
    queued: the first refused client's place opens when the queued task starts (3 s),
    the next one's when the first client's task starts on the other slot (5 s), and
    each later one a short task after that, not all at the first place."""
    loads = [_load(2, (3000.0, 5000.0))]
    queued = [Job(7, 96)]
    book = PromiseBook()
    turns = [_refuse(book, loads, queued, 1, SHORT, 100.0) for _ in range(8)]
    places = [round((p.ready - 100.0) * 1000) for p, _ in turns]
    short = loads[0].service_ms(SHORT, 1, 100.0)  # 200 + 3 x 50
    assert places[:2] == [3000, 5000]
    assert places[2:] == [round(5000 + n * short) for n in range(1, 7)]
    for (p, told), place in zip(turns, places, strict=True):
        assert told >= (1 + RETRY_MARGIN) * place - 1  # stretched, never early
        assert math.isclose(p.at, 100.0 + told / 1000)
    ats = [p.at for p, _ in turns]
    assert all(b - a >= MIN_GAP_MS / 1000 - 1e-9 for a, b in itertools.pairwise(ats))


def test_a_free_place_is_told_the_minimum():
    """ORCH-1970: with the queue's places neither taken nor promised, come back at once."""
    loads = [_load(1, (1000.0,))]
    turn = retry_turn(loads, [], 0, [], SHORT, 1, 0.0)
    assert turn is not None and turn[1] == MIN_RETRY_MS


def test_a_client_refused_again_at_its_turn_keeps_its_place_and_widens_its_margin():
    """ORCH-1971/1973: the engine ran slower than forecast; the first client comes back
    at its time and is refused again: it is renewed ahead of the clients promised after
    it, with four times the margin, instead of going behind all of them."""
    book = PromiseBook()
    queued = [Job(7, 96)]
    first = [_refuse(book, [_load(2, (3000.0, 5000.0))], queued, 1, SHORT, 0.0) for _ in range(4)]
    back = first[0][0].at + 0.05
    slower = [_load(2, (2000.0, 4000.0))]  # the blockers are still running
    renewed, told = _refuse(book, slower, queued, 1, SHORT, back)
    assert renewed.renewals == 1
    assert renewed.ready == pytest.approx(back + 2.0)  # the queued task starts in 2 s
    assert told >= (1 + RENEWAL_GROWTH * RETRY_MARGIN) * 2000.0
    # a renewal is never told less than a second, however close its place
    soon = _refuse(book, [_load(2, (50.0, 60.0))], queued, 1, SHORT, renewed.at + 0.01)
    assert soon[0].renewals == 2 and soon[1] >= MIN_RENEWAL_MS
    # its place is the next to open (no promise counted ahead of it); a new client
    # refused now goes behind the three promised after it
    later = [p for p, _ in first[1:]]
    assert all(abs(renewed.at - p.at) >= MIN_GAP_MS / 1000 - 1e-9 for p in later)
    fresh, _ = _refuse(book, slower, queued, 1, SHORT, back + 0.001)
    assert fresh.renewals == 0 and fresh.ready > renewed.ready + 3 * 0.35 - 1e-9


def test_a_returning_client_that_is_admitted_consumes_its_promise():
    """ORCH-1971: an admission at a promise's time is its client back."""
    book = PromiseBook()
    p = Promise(1.0, 2.0, SHORT)
    book.add(p)
    assert book.take_due(1.5) is None  # not yet its time
    assert book.outstanding(1.5) == [p]
    assert book.take_due(2.2) == p
    assert len(book) == 0


def test_promises_capped_at_the_sdk_bound():
    """ORCH-1971: a promise holds at most 60 s ahead (the client is told 60 s, ORCH-9111),
    while the delay returned is the real forecast."""
    loads = [_load(1, (200_000.0,))]
    turn = retry_turn(loads, [SHORT], 1, [], SHORT, 1, 10.0)
    assert turn is not None
    promise, told = turn
    assert told > MAX_PROMISE_S * 1000
    assert promise.at == 10.0 + MAX_PROMISE_S and promise.ready <= promise.at


def test_no_replica_no_promise():
    assert retry_turn([], [SHORT], 1, [], SHORT, 1, 0.0) is None


def test_far_beyond_the_horizon_is_extrapolated():
    """ORCH-1972: 1,000 queued short tasks on 2 idle slots: the place is about
    1,000 x service / 2 ahead, computed from 256 simulated ones."""
    loads = [_load(2)]
    queued = [SHORT] * 1000
    turn = retry_turn(loads, queued, 1000, [], SHORT, 999, 0.0)
    assert turn is not None
    exact = simulate(loads, queued, 0.0)
    assert exact is not None
    assert turn[0].ready * 1000 == pytest.approx(exact[1].start_ms, rel=0.05)


_loads = st.lists(
    st.tuples(
        st.integers(1, 4),
        st.lists(st.floats(0, 60_000), max_size=4),
        st.floats(0.2, 10.0),
        st.floats(1.0, 300.0),
    ),
    min_size=1,
    max_size=3,
)
_jobs = st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 400)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    loads=_loads,
    queued=_jobs,
    extra=st.integers(0, 3),
    burst=st.integers(1, 12),
    steps=st.lists(st.floats(0, 0.004), min_size=12, max_size=12),
    job=st.tuples(st.integers(0, 2000), st.integers(1, 400)),
)
def test_promises_of_a_burst_are_positive_ordered_and_expire(
    loads, queued, extra, burst, steps, job
):
    """ORCH-1975: for any replica loads, queue, capacity and burst: every delay is at
    least 100 ms; the burst's promises (refusals a few ms apart, none due) come back in
    order, each at least 100 ms after the one before; none is outstanding after its
    time and none is kept 1 s after it."""
    replicas = [
        ReplicaLoad(ServiceModel(Prior(decode_ms_per_token=per), slots=slots), slots, running, pace)
        for slots, running, pace, per in loads
    ]
    jobs = [Job(*j) for j in queued]
    capacity = max(1, len(jobs) - extra) if jobs else 1
    book = PromiseBook()
    now = 1000.0
    made: list[Promise] = []
    for n in range(burst):
        now += steps[n]
        assert book.take_due(now) is None  # a burst: nobody is back yet
        turn = retry_turn(
            replicas, jobs, len(jobs), book.outstanding(now), Job(*job), capacity, now
        )
        assert turn is not None
        promise, told = turn
        assert told >= MIN_RETRY_MS and promise.at >= now + MIN_RETRY_MS / 1000 - 1e-9
        assert promise.at <= now + MAX_PROMISE_S + 1e-9
        if made and promise.at < now + MAX_PROMISE_S - 1e-9:  # not capped (ORCH-1971)
            assert promise.at - made[-1].at >= MIN_GAP_MS / 1000 - 1e-9
        book.add(promise)
        made.append(promise)
    assert len(book) == len(made)
    for p in made:  # expiry
        assert p not in book.outstanding(p.at)
    last = max(p.at for p in made)
    book.outstanding(last + DUE_LATE_S + 1e-6)
    assert len(book) == 0


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.floats(0.0, 30.0), st.booleans(), st.floats(0.1, 120.0)), max_size=40
    )
)
def test_the_book_holds_only_recent_promises(events):
    """ORCH-1975: refusals and admissions at arbitrary times: the book never holds a
    promise more than 1 s past its time, nor more promises than were made in the
    last 61 s, and what it reports outstanding is still to come."""
    book = PromiseBook()
    now = 0.0
    made: list[float] = []  # when each promise was made
    for gap, admitted, delay in events:
        now += gap
        if admitted:
            book.take_due(now)
        else:
            book.take_due(now)
            at = now + min(delay, MAX_PROMISE_S)
            book.add(Promise(now, at, SHORT))
            made.append(now)
        assert all(p.at > now for p in book.outstanding(now))
        recent = sum(1 for t in made if t > now - MAX_PROMISE_S - DUE_LATE_S)
        assert len(book) <= recent


def test_live_pace_blends_and_counts_stalls():
    """ORCH-1977: a task that decoded 10 tokens in 900 ms (100 ms a token) against a
    modelled 50 ms: ratio 2, trusted 9 / 12; a stall since (2 s since its first token)
    makes it slower; fewer than two tokens say nothing."""
    pace = live_pace(50.0, 10, 900.0, 900.0)
    assert pace is not None
    assert pace.ratio == pytest.approx(2.0) and pace.weight == pytest.approx(9 / 12)
    assert pace.ms_per_token == pytest.approx(50.0 * (0.75 * 2.0 + 0.25))
    stalled = live_pace(50.0, 10, 900.0, 2000.0)
    assert stalled is not None and stalled.ratio == pytest.approx(4.0)
    assert live_pace(50.0, 1, 0.0, 500.0) is None
    assert live_pace(50.0, 3, 1e9, 1e9).ratio == 10.0  # type: ignore[union-attr]


def test_replica_pace_is_the_model_plus_weighted_measures():
    """ORCH-1977: no running task measured → 1; the model counts as one voice."""
    assert replica_pace([]) == 1.0
    fast = live_pace(50.0, 101, 5000.0, 5000.0)  # 50 ms: as modelled
    slow = live_pace(50.0, 101, 15000.0, 15000.0)  # 3x
    assert fast is not None and slow is not None
    assert replica_pace([fast]) == pytest.approx(1.0)
    w = slow.weight
    assert replica_pace([slow]) == pytest.approx((1 + 3 * w) / (1 + w))
    # the pace scales the decode of work not yet started, not its first token
    base = _load(1)
    slowed = _load(1, pace=3.0)
    job = Job(10, 11)
    first = base.model.ttft_ms(10, 0.0)
    assert slowed.service_ms(job, 1, 0.0) - first == pytest.approx(
        3 * (base.service_ms(job, 1, 0.0) - first)
    )
