"""Retry turns: when each client refused by a full queue comes back, and the place
kept for it until then (ORCH-1970..1976, ORCH-1978..1984).

A full queue gains one place each time a queued task starts. If every client
refused in a burst were told the same delay (when the *next* place opens),
they would all come back together, one would take the place and the others
would be refused again: with an SDK's two retries, a burst of eight fails.

So each refusal is a **reservation**: the client is told to come back when a
place will be free *for it*, after the places already reserved for the clients
refused before it, and that place is kept for it. :func:`retry_turn` forecasts
the place with the same service-time simulation as every other prediction
(:mod:`llama_orch.core.eta`): the queued tasks, then the reserved clients'
tasks (each released no earlier than its place opens), run on the replicas'
slots in serving order; with ``capacity`` places, the new client's place opens
when the task ``capacity`` places ahead of it starts.

A forecast can be wrong (engines slow down on shared cores while a burst
waits); a reservation does not depend on it. :class:`ReservationBook` keeps a
pool's reservations by the key of the refused request (its idempotency key,
else a digest of its tenant and body: a retry resends the same request). A
request that comes back with its key from its time on is admitted even if the
queue is still full (the queue then exceeds its capacity by the reservations
redeemed before their place opened); one that comes back early is told the time
left and keeps its reservation. A fresh request meets a full queue when the
queued tasks plus the reservations whose place has opened (:meth:`held`) fill it.

Successive reservations are told at least :data:`MIN_GAP_MS` apart, so their
clients come back in order. Pure code: the caller passes ``now`` (monotonic
seconds) and the forecasts' inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .eta import Job, ReplicaLoad, simulate_released

__all__ = [
    "DUE_EARLY_S",
    "GRACE_FRACTION",
    "GRACE_S",
    "HORIZON",
    "MAX_PROMISE_S",
    "MIN_GAP_MS",
    "MIN_RETRY_MS",
    "RESERVE_HORIZON_S",
    "Reservation",
    "ReservationBook",
    "reservation",
    "retry_turn",
]

MIN_GAP_MS = 100.0  # between two told returns: one place, one client
MIN_RETRY_MS = 100.0  # never tell a client to come back sooner (ORCH-1957)
MAX_PROMISE_S = 60.0  # the longest wait a client is told (the SDKs' bound, ORCH-9111)
# Places forecast up to this far ahead are reserved; a client whose place is beyond
# MAX_PROMISE_S is told MAX_PROMISE_S and waits the rest in the queue (ORCH-1984).
RESERVE_HORIZON_S = 2 * MAX_PROMISE_S
DUE_EARLY_S = 0.05  # a return this much before its time is its return (timer slack)
GRACE_S = 2.0  # a reservation waits this long for its client after its time ...
GRACE_FRACTION = 0.25  # ... plus this share of the delay it was told (a loaded client)
HORIZON = 256  # jobs simulated exactly; beyond, the simulated mean pace (ORCH-1957)


class Reservation(NamedTuple):
    """A place kept for a refused client, in monotonic seconds."""

    key: str  # the refused request's key (ORCH-1979)
    ready: float  # when its place opens, as forecast
    at: float  # when its client was told to come back (not before ``ready``)
    expires: float  # forgotten if its client is not back by then
    job: Job  # the task it will submit

    def due(self, now: float) -> bool:
        """Its client is back in time (``DUE_EARLY_S`` of timer slack)."""
        return self.at - DUE_EARLY_S <= now < self.expires


def reservation(key: str, ready: float, at: float, made: float, job: Job) -> Reservation:
    """A reservation made at ``made`` for a place opening at ``ready``, its client told
    to come back at ``at`` (capped at :data:`MAX_PROMISE_S`), with its grace (ORCH-1980)."""
    at = min(at, made + MAX_PROMISE_S)
    return Reservation(key, ready, at, at + GRACE_S + GRACE_FRACTION * (at - made), job)


class ReservationBook:
    """The reservations of one pool (ORCH-1979..1981).

    Keyed by the refused request's key; a key may hold several (identical
    requests are interchangeable), redeemed earliest first.
    """

    def __init__(self) -> None:
        self._all: list[Reservation] = []  # in the order made (non-decreasing ``at``)

    def _expire(self, now: float) -> None:
        if any(r.expires <= now for r in self._all):
            self._all = [r for r in self._all if r.expires > now]

    def outstanding(self, now: float) -> list[Reservation]:
        """Reservations not redeemed nor expired at ``now``, by the time told."""
        self._expire(now)
        return sorted(self._all, key=lambda r: r.at)

    def held(self, now: float) -> int:
        """How many places are kept now: reservations whose place has opened (as
        forecast) and whose client is not back yet (ORCH-1981)."""
        self._expire(now)
        return sum(1 for r in self._all if r.ready <= now)

    def find(self, key: str, now: float) -> Reservation | None:
        """The earliest outstanding reservation of ``key``, left in the book."""
        self._expire(now)
        return min((r for r in self._all if r.key == key), key=lambda r: r.at, default=None)

    def holding(self, key: str | None, now: float) -> tuple[Reservation | None, int]:
        """What admission asks before it queues a request of ``key`` (None: a first
        attempt, ORCH-1979): its client's earliest reservation, and how many places
        are held for the others (ORCH-1980, ORCH-1981). The request is admitted
        past a full queue if its reservation is :meth:`Reservation.due`; otherwise
        the queue is full when its queued tasks plus the places held fill it."""
        mine = self.find(key, now) if key is not None else None
        held = self.held(now) - (1 if mine is not None and mine.ready <= now else 0)
        return mine, held

    def add(self, r: Reservation) -> None:
        self._all.append(r)

    def remove(self, r: Reservation) -> None:
        """Its client was admitted (ORCH-1980)."""
        self._all.remove(r)

    def __len__(self) -> int:
        return len(self._all)


def _starts(
    replicas: Sequence[ReplicaLoad], jobs: Sequence[tuple[float, Job]], now: float
) -> list[float] | None:
    """Start of each ``(release_ms, job)`` in order: the forecast's own simulation
    (:func:`~llama_orch.core.eta.simulate_released`, ORCH-2904), so a retry turn
    applies the same serial prefill (ORCH-1996) as every other forecast."""
    slots = simulate_released(replicas, jobs, now)
    return None if slots is None else [s.start_ms for s in slots]


def _place(
    replicas: Sequence[ReplicaLoad],
    queued: Sequence[Job],
    queued_total: int,
    reserved: Sequence[Reservation],
    k: int,
    now: float,
) -> float:
    """When job ``k`` of the queued then the reserved tasks starts, in ms from now."""
    seq: list[tuple[float, Job]] = [(0.0, j) for j in queued[: min(queued_total, k + 1)]]
    for r in sorted(reserved, key=lambda r: r.ready):
        if len(seq) > k:
            break
        seq.append((max(0.0, (r.ready - now) * 1000), r.job))
    if k > HORIZON:  # far beyond the horizon: the simulated jobs' mean pace
        starts = _starts(replicas, seq[: HORIZON + 1], now)
        assert starts is not None
        return starts[HORIZON] * k / HORIZON
    starts = _starts(replicas, seq[: k + 1], now)
    assert starts is not None
    return starts[k]


def retry_turn(
    replicas: Sequence[ReplicaLoad],
    queued: Sequence[Job],
    queued_total: int,
    reserved: Sequence[Reservation],
    job: Job,
    capacity: int,
    now: float,
) -> tuple[float, float] | None:
    """When the place of a client refused now by a queue of ``capacity`` places
    opens and when to tell it to come back, both in ms from now (ORCH-1972,
    ORCH-1973); None with no Ready replica.

    ``queued``: the queued tasks in serving order (at least the first
    ``HORIZON + 2``); ``queued_total``: how many are queued; ``reserved``: the
    outstanding reservations (:meth:`ReservationBook.outstanding`). The delay
    is the forecast place, at least :data:`MIN_RETRY_MS` and :data:`MIN_GAP_MS`
    after the last reservation told; it is not capped (the caller tells at most
    :data:`MAX_PROMISE_S` and reserves nothing beyond :data:`RESERVE_HORIZON_S`).
    """
    if not replicas:
        return None
    k = queued_total + len(reserved) - capacity  # its place opens when job k starts
    place = 0.0 if k < 0 else _place(replicas, queued, queued_total, reserved, k, now)
    told = max(MIN_RETRY_MS, place)
    if reserved:  # a burst's turns in order, one place per client
        last = max(r.at for r in reserved)
        told = max(told, (last - now) * 1000 + MIN_GAP_MS)
    return place, told
