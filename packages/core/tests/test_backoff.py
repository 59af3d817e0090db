"""Retry reservations (ORCH-1970..1976, ORCH-1978..1984) and the live pace of running
tasks (ORCH-1977)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.backoff import (
    DUE_EARLY_S,
    GRACE_FRACTION,
    GRACE_S,
    MAX_PROMISE_S,
    MIN_GAP_MS,
    MIN_RETRY_MS,
    RESERVE_HORIZON_S,
    Reservation,
    ReservationBook,
    reservation,
    retry_turn,
)
from llama_orch.core.errors import AdmissionRejected
from llama_orch.core.eta import Job, ReplicaLoad, live_pace, replica_pace, simulate
from llama_orch.core.queue import AdmissionQueue
from llama_orch.core.servicetime import Prior, ServiceModel

SHORT = Job(38, 4)


def _load(
    slots: int = 2, running: tuple[float, ...] = (), pace: float = 1.0, prefill: float = 2.0
) -> ReplicaLoad:
    model = ServiceModel(
        Prior(
            overhead_ms=200.0, prefill_ms_per_token=prefill, decode_ms_per_token=50.0, slowdown=0.0
        ),
        slots=slots,
    )
    return ReplicaLoad(model, slots, list(running), pace)


def _refuse(
    book: ReservationBook, loads, queued, capacity, job, now, key="k"
) -> tuple[Reservation, float]:
    """What orchestratord does on a refusal by a full queue (Workload.retry_after_ms)."""
    turn = retry_turn(loads, queued, len(queued), book.outstanding(now), job, capacity, now)
    assert turn is not None
    place, told = turn
    r = reservation(key, now + place / 1000, now + told / 1000, now, job)
    book.add(r)
    return r, told


def test_a_burst_is_spread_over_the_places_that_open():
    """ORCH-1970/1972/1973: capacity 1, 2 slots busy for 3 s and 5 s, one 96-token task
    queued: the first refused client's place opens when the queued task starts (3 s),
    the next one's when the first client's task starts on the other slot (5 s), and
    each later one a short task after that; each is told its own place. (Prompts
    cost nothing here: a prompt's delay of the other slots, ORCH-1996, is
    test_a_retry_turn_applies_the_serial_prefill's.)"""
    loads = [_load(2, (3000.0, 5000.0), prefill=0.0)]
    queued = [Job(7, 96)]
    book = ReservationBook()
    turns = [_refuse(book, loads, queued, 1, SHORT, 100.0, f"c{n}") for n in range(8)]
    places = [round((r.ready - 100.0) * 1000) for r, _ in turns]
    short = loads[0].service_ms(SHORT, 1, 100.0)  # 200 + 3 x 50 (no prefill cost)
    assert places[:2] == [3000, 5000]
    assert places[2:] == [round(5000 + n * short) for n in range(1, 7)]
    for (r, told), place in zip(turns, places, strict=True):
        assert told == pytest.approx(place, abs=1)  # the forecast itself, no stretch
        assert r.at == pytest.approx(100.0 + told / 1000)
        assert r.expires == pytest.approx(r.at + GRACE_S + GRACE_FRACTION * told / 1000)


def test_a_retry_turn_applies_the_serial_prefill():
    """ORCH-2904: a retry turn is forecast by the forecast's own simulation, so a
    queued task's prompt delays the replica's other busy slot (ORCH-1996), as in
    ``predicted_start_ms``. Capacity 1, slots busy for 3 s and 5 s, a queued task of
    200 prompt tokens at 5 ms each and 100 output tokens: the first refused client's
    place opens when it starts (3 s), the second's when the first client's task starts on the other
    slot, which its prompt kept busy 1,000 ms longer (6 s). Before, the turn's own
    copy of the simulation had no serial prefill and told the second client 5 s."""
    loads = [_load(2, (3000.0, 5000.0), prefill=5.0)]
    queued = [Job(200, 100)]  # busy from 3 s to 3 + 0.2 + 1 + 99 x 0.05 s
    book = ReservationBook()
    first, _ = _refuse(book, loads, queued, 1, SHORT, 100.0, "c0")
    second, told = _refuse(book, loads, queued, 1, SHORT, 100.0, "c1")
    assert (first.ready - 100.0) * 1000 == pytest.approx(3000.0)
    assert (second.ready - 100.0) * 1000 == pytest.approx(6000.0)
    assert told == pytest.approx(6000.0)
    # the same start as every other forecast of the same work
    slots = simulate(loads, [*queued, SHORT, SHORT], 100.0)
    assert slots is not None and slots[1].start_ms == pytest.approx(6000.0)


def test_a_free_place_is_told_the_minimum():
    """ORCH-1970: with the queue's places neither taken nor reserved, come back at once."""
    loads = [_load(1, (1000.0,))]
    assert retry_turn(loads, [], 0, [], SHORT, 1, 0.0) == (0.0, MIN_RETRY_MS)


def test_places_are_held_from_their_opening_and_given_to_their_own_client():
    """ORCH-1980/1981: a place counts as held once it opens (as forecast) until its
    client is back or its grace ends; its own client does not count its own place,
    and is due from its time on (timer slack), not before."""
    book = ReservationBook()
    a = reservation("a", 1.0, 2.0, 0.0, SHORT)
    b = reservation("b", 3.0, 3.5, 0.0, SHORT)
    book.add(a)
    book.add(b)
    assert book.holding(None, 0.5) == (None, 0)  # nothing opened yet
    assert book.holding(None, 1.5) == (None, 1)  # a's place is open: held for it
    assert book.holding("a", 1.5) == (a, 0)  # ... but not against a itself
    assert not a.due(1.5) and a.due(2.0 - DUE_EARLY_S) and a.due(a.expires - 1e-6)
    assert book.holding("b", 3.2) == (b, 1)
    book.remove(a)  # a was admitted
    assert book.holding(None, 3.2) == (None, 1)
    assert book.outstanding(b.expires) == []  # b never came back: forgotten
    assert len(book) == 0


def test_a_wait_beyond_the_sdk_bound_is_told_uncapped_and_reserved_at_the_cap():
    """ORCH-1971/1984: the delay returned is the real forecast (the caller caps what it
    tells at 60 s, ORCH-9111); a place up to 120 s ahead is reserved with its client
    back at 60 s, who then waits the rest in the queue."""
    loads = [_load(1, (90_000.0,))]
    turn = retry_turn(loads, [SHORT], 1, [], SHORT, 1, 10.0)
    assert turn is not None and turn[1] > MAX_PROMISE_S * 1000
    r = reservation("k", 10.0 + turn[0] / 1000, 10.0 + turn[1] / 1000, 10.0, SHORT)
    assert r.at == 10.0 + MAX_PROMISE_S < r.ready


def test_no_replica_no_turn():
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
    assert turn[0] == pytest.approx(exact[1].start_ms, rel=0.05)


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


def _replicas(loads) -> list[ReplicaLoad]:
    return [
        ReplicaLoad(ServiceModel(Prior(decode_ms_per_token=per), slots=slots), slots, running, pace)
        for slots, running, pace, per in loads
    ]


@settings(max_examples=200, deadline=None)
@given(
    loads=_loads,
    queued=_jobs,
    extra=st.integers(0, 3),
    burst=st.integers(1, 12),
    steps=st.lists(st.floats(0, 0.004), min_size=12, max_size=12),
    job=st.tuples(st.integers(0, 2000), st.integers(1, 400)),
)
def test_turns_of_a_burst_are_positive_ordered_and_expire(loads, queued, extra, burst, steps, job):
    """ORCH-1975: for any replica loads, queue, capacity and burst: every delay is at
    least 100 ms and never before its place opens (as forecast); the burst's turns
    (refusals a few ms apart) come back in order, each at least 100 ms after the one
    before; a reservation is forgotten after its grace."""
    replicas = _replicas(loads)
    jobs = [Job(*j) for j in queued]
    capacity = max(1, len(jobs) - extra) if jobs else 1
    book = ReservationBook()
    now = 1000.0
    made: list[Reservation] = []
    for n in range(burst):
        now += steps[n]
        turn = retry_turn(
            replicas, jobs, len(jobs), book.outstanding(now), Job(*job), capacity, now
        )
        assert turn is not None
        place, told = turn
        assert told >= MIN_RETRY_MS and told >= place
        if made and told < MAX_PROMISE_S * 1000:  # below the cap: in order, apart
            assert now + told / 1000 - made[-1].at >= MIN_GAP_MS / 1000 - 1e-9
        if place <= RESERVE_HORIZON_S * 1000:
            r = reservation(f"c{n}", now + place / 1000, now + told / 1000, now, Job(*job))
            book.add(r)
            made.append(r)
    assert len(book) == len(made)
    for r in made:  # told when the place opens, or the most a client can be told
        assert r.ready <= r.at + 1e-9 or r.at == pytest.approx(
            r.expires - GRACE_S - GRACE_FRACTION * MAX_PROMISE_S
        )
        assert r.at < r.expires
    if made:
        assert book.outstanding(max(r.expires for r in made)) == []


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 4),
    preload=st.integers(0, 4),
    events=st.lists(
        st.tuples(
            st.sampled_from(["fresh", "return", "start"]),
            st.floats(0.0, 3.0),  # time since the previous event
            st.integers(0, 7),  # which refused client, for "return"
            st.floats(0.0, 0.9),  # how late within its grace, for "return"
        ),
        max_size=40,
    ),
    per=st.floats(1.0, 300.0),
)
def test_a_client_back_at_its_time_is_admitted_whatever_the_engines_did(
    capacity, preload, events, per
):
    """ORCH-1982: the admission protocol (ReservationBook.holding, AdmissionQueue.push
    with ``held``/``redeemed``, retry_turn) driven by arbitrary arrivals, returns and
    queue starts at arbitrary times (engines of any speed: the forecasts may be
    arbitrarily wrong): every refused client that comes back with its key between its
    time and its grace is admitted at once; a first attempt never takes a place held
    for a refused client (admitted only while queued + held < capacity); the queue
    exceeds its capacity only by tasks of clients admitted with their reservation."""
    replicas = [ReplicaLoad(ServiceModel(Prior(decode_ms_per_token=per), slots=1), 1, [1000.0])]
    queue: AdmissionQueue[str] = AdmissionQueue(capacity)
    book = ReservationBook()
    redeemed_queued: set[str] = set()
    for n in range(min(preload, capacity)):
        queue.push(f"pre{n}", "interactive")
    refused: list[Reservation] = []
    now, seq = 0.0, itertools.count()
    for kind, gap, who, late in events:
        now += gap
        if kind == "start":
            item = queue.pop()
            redeemed_queued.discard(item or "")
            continue
        if kind == "return":
            live = [r for r in refused if r in book.outstanding(now)]
            if not live:
                continue
            r = live[who % len(live)]
            now = max(now, r.at + late * (r.expires - r.at))  # back within its grace
            key: str | None = r.key
        else:
            key = None  # a first attempt
        mine, held = book.holding(key, now)
        name = key or f"fresh{next(seq)}"
        before = len(queue)
        try:
            queue.push(name, "interactive", held=held, redeemed=mine is not None and mine.due(now))
        except AdmissionRejected:
            assert kind == "fresh", "a client back at its time was refused"
            assert before + held >= capacity
            queued = [SHORT] * len(queue)
            turn = retry_turn(
                replicas, queued, len(queue), book.outstanding(now), SHORT, capacity, now
            )
            assert turn is not None
            place, told = turn
            if place <= RESERVE_HORIZON_S * 1000:
                r = reservation(name, now + place / 1000, now + told / 1000, now, SHORT)
                book.add(r)
                refused.append(r)
            continue
        if kind == "fresh":
            assert before + held < capacity  # never a held place, never past capacity
        else:
            assert mine is not None
            book.remove(mine)
            if before >= capacity:
                redeemed_queued.add(name)
        assert len(queue) <= capacity + len(redeemed_queued)


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
