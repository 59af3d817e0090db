"""Retry turns: when each client refused by a full queue should come back (ORCH-1970..1976).

A full queue gains one place each time a queued task starts. If every client
refused in a burst were told the same delay (when the *next* place opens),
they would all come back together, one would take the place and the others
would be refused again: with an SDK's two retries, a burst of eight fails.

So each refusal is a **promise**: the client is told to come back when a place
will be free *for it*, after the places already promised to the clients
refused before it. :func:`retry_turn` forecasts that with the same
service-time simulation as every other prediction (:mod:`llama_orch.core.eta`):
the queued tasks, then the promised clients' tasks (each released no earlier
than its place opens), run on the replicas' slots in serving order; with
``capacity`` places, the new client's place opens when the task ``capacity``
places ahead of it starts. :class:`PromiseBook` keeps a pool's promises.

The delay told is the forecast stretched by a margin: a forecast that is
early by up to the margin (a slower engine than modelled) still brings the
client back after its place opened, and stretching every promise of a burst
by the same factor keeps their order.
Successive promises are at least :data:`MIN_GAP_MS` apart, so that two
clients never race for one place.

A client refused again when it comes back at its promised time (a refusal
while a promise is due) was promised too early: its new promise keeps its
place in line, ahead of the clients promised after it, with a larger margin
(:data:`RETRY_MARGIN` x :data:`RENEWAL_GROWTH`^renewals, at most
:data:`MAX_MARGIN`): its first forecast was wrong, so the next one is trusted
less.
Without that it would go behind every later promise, and a whole burst told
too early would be told to wait past the SDKs' bound.

Pure code: the caller passes ``now`` (monotonic seconds) and the forecasts' inputs.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from typing import NamedTuple

from .eta import Job, ReplicaLoad

__all__ = [
    "DUE_EARLY_S",
    "DUE_LATE_S",
    "MAX_MARGIN",
    "MAX_PROMISE_S",
    "MIN_GAP_MS",
    "MIN_RENEWAL_MS",
    "MIN_RETRY_MS",
    "RENEWAL_GROWTH",
    "RETRY_MARGIN",
    "Promise",
    "PromiseBook",
    "retry_turn",
]

RETRY_MARGIN = 0.5  # a first forecast up to a third too short still finds the place open
MAX_MARGIN = 4.0  # renewals quadruple the margin up to this (told 5x the place)
RENEWAL_GROWTH = 4.0  # a client refused again was promised too early: much more margin
MIN_GAP_MS = 100.0  # between two promised returns: one place, one client
MIN_RETRY_MS = 100.0  # never tell a client to come back sooner (ORCH-1957)
MIN_RENEWAL_MS = 1000.0  # a renewal: sub-second forecasts already proved too short
MAX_PROMISE_S = 60.0  # the longest wait a client is told (the SDKs' bound, ORCH-9111)
DUE_EARLY_S = 0.01  # clients come back after their time, never before (timer slack)
DUE_LATE_S = 1.0  # ... or this much after it (event-loop and network latency)
HORIZON = 256  # jobs simulated exactly; beyond, the simulated mean pace (ORCH-1957)


class Promise(NamedTuple):
    """A refused client's turn, in monotonic seconds."""

    ready: float  # when its place opens, as forecast
    at: float  # when it was told to come back (later than ``ready``)
    job: Job  # the task it will submit
    renewals: int = 0  # how many times this client was refused again at its turn


class PromiseBook:
    """The promises of one pool (ORCH-1971).

    A promise holds a place until the time its client was told (``at``, at
    most :data:`MAX_PROMISE_S` ahead): then the client is back (queued, or
    refused again) or gone. A refusal within ``[at - DUE_EARLY_S, at +
    DUE_LATE_S]`` of a promise is taken as its client back (:meth:`take_due`);
    a promise nobody came back for is forgotten ``DUE_LATE_S`` after its time.
    """

    def __init__(self) -> None:
        self._by_at: list[Promise] = []  # sorted by ``at``

    def _expire(self, now: float) -> None:
        cut = bisect.bisect_left(self._by_at, now - DUE_LATE_S, key=lambda p: p.at)
        del self._by_at[:cut]

    def outstanding(self, now: float) -> list[Promise]:
        """Promises whose time has not come at ``now``, earliest first."""
        self._expire(now)
        return [p for p in self._by_at if p.at > now]

    def take_due(self, now: float) -> Promise | None:
        """The earliest promise due at ``now`` (its client is back), removed."""
        self._expire(now)
        for i, p in enumerate(self._by_at):
            if p.at > now + DUE_EARLY_S:
                break
            del self._by_at[i]
            return p
        return None

    def add(self, promise: Promise) -> None:
        bisect.insort(self._by_at, promise, key=lambda p: p.at)

    def __len__(self) -> int:
        return len(self._by_at)


def _starts(
    replicas: Sequence[ReplicaLoad], jobs: Sequence[tuple[float, Job]], now: float
) -> list[float] | None:
    """Start of each ``(release_ms, job)`` in order: the earliest free slot, not before
    its release; service times from the slot's replica model at its busy count."""
    free: list[list[float]] = []
    heap: list[tuple[float, int, int]] = []
    for idx, r in enumerate(replicas):
        busy = sorted(max(0.0, ms) for ms in r.running_ms)
        times = [busy[k] if k < len(busy) else 0.0 for k in range(max(1, r.slots))]
        free.append(times)
        heap.extend((t, idx, k) for k, t in enumerate(times))
    if not heap:
        return None
    heapq.heapify(heap)
    out: list[float] = []
    for release, job in jobs:
        t, idx, k = heap[0]
        start = max(t, release)
        busy_now = 1 + sum(1 for j, f in enumerate(free[idx]) if j != k and f > start)
        end = start + replicas[idx].service_ms(job, busy_now, now)
        free[idx][k] = end
        heapq.heapreplace(heap, (end, idx, k))
        out.append(start)
    return out


def _place(
    replicas: Sequence[ReplicaLoad],
    queued: Sequence[Job],
    queued_total: int,
    promised: Sequence[Promise],
    k: int,
    now: float,
) -> float:
    """When job ``k`` of the queued then the promised tasks starts, in ms from now."""
    seq: list[tuple[float, Job]] = [(0.0, j) for j in queued[: min(queued_total, k + 1)]]
    for p in sorted(promised, key=lambda p: p.ready):
        if len(seq) > k:
            break
        seq.append((max(0.0, (p.ready - now) * 1000), p.job))
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
    promised: Sequence[Promise],
    job: Job,
    capacity: int,
    now: float,
    *,
    renewing: Promise | None = None,
) -> tuple[Promise, float] | None:
    """The promise for a client refused now by a queue of ``capacity`` places, and
    the delay to tell it in ms (ORCH-1972); None with no Ready replica.

    ``queued``: the queued tasks in serving order (at least the first
    ``HORIZON + 2``); ``queued_total``: how many are queued; ``promised``: the
    outstanding promises (:meth:`PromiseBook.outstanding`); ``renewing``: the
    due promise of this client if it is back (:meth:`PromiseBook.take_due`):
    it keeps its place in line and its margin grows (ORCH-1973). The
    promise's ``at`` is capped at :data:`MAX_PROMISE_S`; the delay is not.
    """
    if not replicas:
        return None
    renewals = 0
    ahead = list(promised)
    if renewing is not None:
        renewals = renewing.renewals + 1
        ahead = [p for p in promised if p.ready < renewing.ready]
    k = queued_total + len(ahead) - capacity  # its place opens when job k starts
    place = 0.0 if k < 0 else _place(replicas, queued, queued_total, ahead, k, now)
    margin = min(MAX_MARGIN, RETRY_MARGIN * RENEWAL_GROWTH**renewals)
    floor = MIN_RENEWAL_MS if renewals else MIN_RETRY_MS
    told = max(floor, (1.0 + margin) * place)
    at = now + told / 1000
    taken = sorted(p.at for p in promised)
    if renewing is None and taken:
        at = max(at, taken[-1] + MIN_GAP_MS / 1000)  # a burst's turns in order
    else:
        for t in taken:  # between the others' turns, never racing one of them
            if abs(t - at) < MIN_GAP_MS / 1000 - 1e-6:
                at = t + MIN_GAP_MS / 1000
    told = (at - now) * 1000
    kept = min(at, now + MAX_PROMISE_S)
    return Promise(min(now + place / 1000, kept), kept, job, renewals), told
