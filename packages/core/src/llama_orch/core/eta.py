"""Start and finish forecasts over a replica set from service-time models (ORCH-1957..1959).

Every prediction the orchestrator makes (``predicted_start_ms``, backoff and
``Retry-After``, deadline feasibility, ``on_time_probability``, the ETA of a
queued task) is one call of :func:`simulate`: each Ready replica's slots
become free when the work running on them is done; the queued tasks are
assigned in serving order to the earliest free slot; each one's service time
comes from that replica's :class:`~llama_orch.core.servicetime.ServiceModel`
at the number of its slots busy at that moment.

Pure code: the caller passes ``now`` and the models.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .guard import _tick, guard_hold, read_end, read_hold
from .servicetime import ServiceModel

__all__ = [
    "PACE_BOUNDS",
    "Job",
    "Pace",
    "ReplicaLoad",
    "RunningForecast",
    "Slot",
    "admits",
    "best_slot",
    "live_pace",
    "prefill_left",
    "replica_holds",
    "replica_pace",
    "simulate",
    "simulate_held",
    "simulate_released",
    "simulate_running",
]


class Job(NamedTuple):
    tokens_in: int
    tokens_out: int
    # a queued task's guard limit, ms from now (ORCH-2933); None: the guard's factor x
    # its forecast finish, as if told now (the task being admitted)
    limit_ms: float | None = None
    # the guard's decision its 202 told it (ORCH-2937): True held, False not held; None:
    # decided now by the plain edge (the task being admitted, or the guard off)
    told_hold: bool | None = None


class Slot(NamedTuple):
    """Where and when a job starts and ends, in ms from now."""

    start_ms: float
    finish_ms: float
    replica: int  # index into the replicas given


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One Ready replica: its model, its slots, the ms left of each running task,
    ``pace``, how much slower than its model its running tasks go now (ORCH-1977), and
    ``prefill_ms``, when the prompts it is prefilling now are done (ORCH-1996)."""

    model: ServiceModel
    slots: int
    running_ms: Sequence[float]
    pace: float = 1.0
    prefill_ms: float = 0.0  # until its prefill work in progress ends (ORCH-1996)
    # The dispatch guard (ORCH-2931, ORCH-2933): each running task's guard limit in ms
    # from now, in the order of ``running_ms`` (inf: none), and the factor ``f`` the
    # jobs the simulation starts get theirs by; None: no guard, no limits kept.
    limits_ms: Sequence[float] | None = None
    guard: float | None = None

    def service_ms(self, job: Job, busy: float, now: float) -> float:
        """The model's service time with its decode at the replica's current pace (the
        first-token time is the model's: its overhead already learned the load)."""
        return self.model.service_ms(job.tokens_in, job.tokens_out, busy, now, pace=self.pace)


class Pace(NamedTuple):
    """A running task's decode pace: blended with the model, and measured/modelled."""

    ms_per_token: float
    ratio: float
    weight: float  # how much of ``ms_per_token`` is the task's own measure (0..1)


PACE_TRUST = 3.0  # token gaps after which a task's own pace counts as much as the model
PACE_BOUNDS = (0.2, 10.0)  # measured/modelled, clamped


def live_pace(
    model_ms: float,
    tokens: int,
    decode_ms: float,
    since_first_ms: float,
    forecast_ms: float | None = None,
) -> Pace | None:
    """The pace of a running task from its own tokens (ORCH-1977): ``tokens`` since
    its first, ``decode_ms`` from its first to its latest token, ``since_first_ms``
    from its first token to now (a stall counts: the next token cannot come sooner
    than now), against ``model_ms``, the model's pace over those tokens (ORCH-2918:
    at the busy slots it had then). ``forecast_ms``: the model's pace for its tokens
    left (at the busy slots now), which the ratio scales; ``model_ms`` if None.
    None before two tokens."""
    if tokens < 2 or model_ms <= 0:
        return None
    gaps = tokens - 1
    measured = max(decode_ms / gaps, since_first_ms / tokens)
    lo, hi = PACE_BOUNDS
    ratio = min(max(measured / model_ms, lo), hi)
    weight = gaps / (gaps + PACE_TRUST)
    ahead = model_ms if forecast_ms is None else forecast_ms
    return Pace(ahead * (weight * ratio + 1.0 - weight), ratio, weight)


def replica_pace(paces: Iterable[Pace]) -> float:
    """How much slower than modelled a replica runs now: its running tasks' measured
    ratios, weighted by trust, with the model as one more voice of weight 1."""
    num, den = 1.0, 1.0
    for p in paces:
        num += p.weight * p.ratio
        den += p.weight
    return num / den


OVERRUN_SHARE = 0.1  # of the time a prompt past its forecast has run: still to come


def prefill_left(forecast_ms: float, elapsed_ms: float) -> float:
    """ms until the first token of a prompt forecast at ``forecast_ms`` after its
    dispatch, ``elapsed_ms`` ago (ORCH-2914): what is left of the forecast, and once
    the prompt is near or past it a tenth of the time it has run, so the first token
    told moves 1.1 s later for each second of overrun instead of sliding with the
    clock (a prompt that has overrun is slower than forecast by an unknown factor)."""
    return max(forecast_ms - elapsed_ms, OVERRUN_SHARE * max(0.0, elapsed_ms), 0.0)


def replica_holds(
    replicas: Sequence[ReplicaLoad], job: Job, now: float
) -> list[tuple[float, float] | None]:
    """At a dispatch (ORCH-2931), per replica: None when the guard leaves it open to
    ``job``, else the ms until the running tasks its prefill would push past their
    limits end, and the job's service there at the busy slots it would join (for
    ORCH-2932's deadline). Open everywhere without the guard."""
    out: list[tuple[float, float] | None] = []
    for r in replicas:
        hold = 0.0
        if r.limits_ms is not None:
            prefill = r.model.params(now).prefill_ms(job.tokens_in)
            slots = zip(r.running_ms, r.limits_ms, strict=True)
            hold = guard_hold(slots, prefill, 0.0, job.told_hold)
        busy = min(max(1, r.slots), 1 + len(r.running_ms))
        out.append((hold, r.service_ms(job, busy, now)) if hold > 0.0 else None)
    return out


class _Lane:
    """One replica during a simulation (ORCH-1957, ORCH-1996, ORCH-2760): how many of
    its slots are idle now, the ascending free times of its slots that hold work
    (stored less ``off``, the prefill delay added to all of them so far: a shift is
    O(1)), and when its prefill work in progress ends (ms from now)."""

    __slots__ = (
        "busy", "guard", "idle", "jobs_busy", "limits", "off", "params", "plan", "prefill_until"
    )  # fmt: skip

    def __init__(self, r: ReplicaLoad, now: float) -> None:
        n = max(1, r.slots)
        held = sorted(max(0.0, ms) for ms in r.running_ms)[:n]
        self.busy = [ms for ms in held if ms > 0.0]
        self.idle = n - len(self.busy)
        self.off = 0.0
        self.prefill_until = max(0.0, r.prefill_ms)
        self.params = r.model.params(now)  # its prefill cost (ORCH-1996, ORCH-2900)
        # ORCH-2933: with the guard, ``busy`` again as (stored end, limit) pairs, kept
        # sorted alike (the same stored ends, so every removal below matches ``busy``'s)
        self.guard = r.guard
        # ORCH-2970: the last :meth:`service`'s readings of the lane and its job's busy slots
        self.plan: list[tuple[float, int]] | None = None
        self.jobs_busy = 1
        self.limits: list[tuple[float, float, int]] | None = None
        if r.guard is not None:
            lims = r.limits_ms or ()
            b0 = max(1, len(r.running_ms))  # the busy slots ``Workload.loads`` read them at
            pairs = sorted(
                (max(0.0, ms), lims[i] if i < len(lims) else math.inf, b0)
                for i, ms in enumerate(r.running_ms)
            )[:n]
            self.limits = [p for p in pairs if p[0] > 0.0]

    def first(self) -> float:
        """When its first slot frees."""
        return 0.0 if self.idle else self.busy[0] + self.off

    def key(self) -> float:
        """:meth:`first` at the resolution ties are broken at (lowest replica first)."""
        return 0.0 if self.idle else _tick(self.busy[0] + self.off)

    def others_busy(self, at: float | None = None) -> int:
        """Slots other than the first free one that still hold work when it frees, or
        at ``at`` if that is later (a job released then, ORCH-2904)."""
        if at is not None and at > self.first():
            return self._busy_after(at)
        if self.idle:
            return len(self.busy)
        # ties compared on the times themselves (not on their stored remainders), at
        # the resolution of ``_tick``: a remainder plus the offset may differ from the
        # same time summed otherwise in the last bit
        busy, off = self.busy, self.off
        t = _tick(busy[0] + off)
        # past the exact copies of the first time, then past the times that tie with
        # it at that resolution (rare): ``_tick(x + off)`` grows with ``x``, so this
        # is the bisection on that key without a Python call per step (issue #20)
        i, n = bisect.bisect_right(busy, busy[0]), len(busy)
        while i < n and _tick(busy[i] + off) <= t:
            i += 1
        return n - i

    def _busy_after(self, t: float) -> int:
        """Slots holding work beyond ``t`` (compared at the resolution of ``_tick``)."""
        busy, off, n = self.busy, self.off, len(self.busy)
        i = bisect.bisect_right(busy, t - off)
        tt = _tick(t)
        while i > 0 and _tick(busy[i - 1] + off) > tt:  # rounding below the tie
            i -= 1
        while i < n and _tick(busy[i] + off) <= tt:
            i += 1
        return n - i

    def start(self, job: Job, release: float = 0.0) -> float:
        """When ``job`` starts here: its first free slot, not before ``release``, and
        with the guard not before the slots it would push past their limits end
        (ORCH-2933)."""
        return self.read(job, release)[0]

    def read(self, job: Job, release: float = 0.0) -> tuple[float, list[tuple[float, int]] | None]:
        """:meth:`start`, and with the guard the lane's readings up to it (ORCH-2970)."""
        t = max(self.first(), release)
        if self.limits:
            off = self.off
            slots = [(s + off, lim, b) for s, lim, b in self.limits]
            prefill = self.params.prefill_ms(job.tokens_in)
            return read_hold(slots, prefill, t, job.told_hold, self.params.slowdown)
        return t, None

    def service(
        self, r: ReplicaLoad, job: Job, now: float, release: float = 0.0
    ) -> tuple[float, float, float]:
        """``(start, finish, begin)`` of ``job`` on the first free slot, not before
        ``release`` (ORCH-1972): its own prefill begins once the prefill in progress
        is done (ORCH-1996)."""
        t, self.plan = self.read(job, release)
        begin = max(t, self.prefill_until)
        # read at its start (ORCH-2970), the slots holding work past it are the reading's
        busy = 1 + (self.plan[-1][1] if self.plan else self.others_busy(t))
        self.jobs_busy = busy
        return t, begin + r.service_ms(job, busy, now), begin

    def take(self, end: float, begin: float, job: Job, start: float = 0.0) -> None:
        """The first free slot runs a job from ``start`` on, to ``end``: its prefill
        delays every other slot that holds work then (ORCH-1996). A ``start`` later
        than the first free slot (a release, ORCH-1972; releases come in ascending
        order) finds the slots that freed by then idle. With the guard the lane goes on
        from the readings that gave the start (ORCH-2970): every later end as read then."""
        if self.plan and self.limits is not None:
            chain, off, slow, ts = self.plan, self.off, self.params.slowdown, _tick(start)
            self.plan = None
            t0 = _tick(chain[0][0])
            read = [
                (read_end(s + off, b, chain, slow) - off, lim, b)
                if _tick(s + off) > t0
                else (s, lim, b)
                for s, lim, b in self.limits
            ]  # the slots read past the start hold work at its busy slots (a freed one, none)
            self.limits = sorted(
                (s, lim, chain[-1][1] if _tick(s + off) > ts else b) for s, lim, b in read
            )
            self.busy = [s for s, _, _ in self.limits]
        if start > self.first():
            busy, off, t = self.busy, self.off, _tick(start)
            k = 0
            while k < len(busy) and _tick(busy[k] + off) <= t:
                k += 1
            if k:
                del busy[:k]
                if self.limits is not None:
                    del self.limits[:k]
                self.idle += k
        if self.idle:
            self.idle -= 1
        else:
            del self.busy[0]
            if self.limits is not None:
                del self.limits[0]
        prefill = self.params.prefill_ms(job.tokens_in)  # ORCH-2900
        self.prefill_until = begin + prefill
        self.off += prefill
        if end > 0.0:
            bisect.insort(self.busy, end - self.off)
            if self.limits is not None and self.guard is not None:
                limit = self.guard * end if job.limit_ms is None else job.limit_ms
                bisect.insort(self.limits, (end - self.off, limit, self.jobs_busy))
        else:  # a job of no time at all (no overhead, no tokens): its slot is idle now
            self.idle += 1


class _Sim:
    """The one simulation loop of every forecast, one job per :meth:`step`: ``(release_ms,
    job)`` pairs in serving order (releases ascending; 0 for the queued work), each on the
    slot that frees first, not before its release (ORCH-1957, ORCH-1972, ORCH-2904).
    Each replica is a lane (its idle slots counted, the others one sorted list) in a heap
    of the replicas by their first free slot (ties: lowest index). Slots of one replica
    are alike, so only when each frees matters: a job costs O(log slots) + a C memmove
    instead of a pass over every slot (the bench's fake engine has 512 slots; issue #20).
    It holds O(replicas + slots), not a list of the jobs' forecasts (issue #20)."""

    __slots__ = ("floor", "guarded", "heap", "held", "lanes", "now", "raised", "replicas")

    def __init__(
        self, replicas: Sequence[ReplicaLoad], now: float, held: list[_Held] | None = None
    ) -> None:
        self.replicas, self.now, self.held = replicas, now, held
        self.lanes = [_Lane(r, now) for r in replicas]
        self.heap = [(lane.key(), idx) for idx, lane in enumerate(self.lanes)]
        heapq.heapify(self.heap)
        # ORCH-2933: with the guard a job goes where it starts first, held or not: a
        # pass over the lanes instead of the heap (the guard is opt-in, ORCH-2935)
        self.guarded = any(lane.limits is not None for lane in self.lanes)
        self.floor = 0.0  # with the guard, the start of the job ahead: none passes it
        self.raised = False  # the guard held the last job past its free slot (ORCH-2937)

    def step(self, release: float, job: Job) -> Slot:
        if self.guarded:
            release = max(release, self.floor)  # a held job blocks those behind it
            lanes = self.lanes
            idx = min(range(len(lanes)), key=lambda i: (_tick(lanes[i].start(job, release)), i))
        else:
            _, idx = self.heap[0]
        lane = self.lanes[idx]
        start, end, begin = lane.service(self.replicas[idx], job, self.now, release)
        if self.guarded:
            self.raised = _tick(start) > _tick(max(lane.first(), release))
        if self.held is not None:  # ORCH-2906: the prefill each job adds to its lane
            at = start if self.guarded else None  # a held job finds slots freed (ORCH-2933)
            read = (lane.plan or [], lane.params.slowdown, lane.jobs_busy)
            self.held[idx].feed(lane.params.prefill_ms(job.tokens_in), end, at, read)
        lane.take(end, begin, job, start)
        if self.guarded:
            self.floor = start
        else:
            heapq.heapreplace(self.heap, (lane.key(), idx))
        return Slot(start, end, idx)


def _run(
    replicas: Sequence[ReplicaLoad], jobs: Iterable[tuple[float, Job]], now: float
) -> tuple[list[Slot], list[_Lane]] | None:
    """Every job of ``jobs`` through one :class:`_Sim`; its lanes after the last."""
    if not replicas:
        return None
    sim = _Sim(replicas, now)
    return [sim.step(release, job) for release, job in jobs], sim.lanes


def _queued(jobs: Iterable[Job]) -> Iterator[tuple[float, Job]]:
    """Queued work: every job released now."""
    return ((0.0, job) for job in jobs)


def simulate_released(
    replicas: Sequence[ReplicaLoad], jobs: Iterable[tuple[float, Job]], now: float
) -> list[Slot] | None:
    """:func:`simulate` of ``(release_ms, job)`` pairs, releases in ascending order:
    a job takes the slot that frees first, not before its release (ORCH-1972); the
    same lanes, service times and serial prefill as every forecast (ORCH-2904)."""
    ran = _run(replicas, jobs, now)
    return None if ran is None else ran[0]


def simulate_held(
    replicas: Sequence[ReplicaLoad], jobs: Iterable[Job], now: float
) -> tuple[list[Slot], bool]:
    """:func:`simulate`, and whether the dispatch guard held its last job past its free
    slot and the job ahead of it (ORCH-2937: the decision its 202 tells it); no slots
    and False with no replica."""
    if not replicas:
        return [], False
    sim = _Sim(replicas, now)
    return [sim.step(release, job) for release, job in _queued(jobs)], sim.raised


def simulate(replicas: Sequence[ReplicaLoad], jobs: Iterable[Job], now: float) -> list[Slot] | None:
    """Forecast every job of ``jobs`` (in serving order); None with no replica.

    A job takes the slot that frees first (ties: lowest replica index); it
    decodes at the pace of its replica with as many slots busy as are busy
    when it starts (itself included). Its replica prefills one prompt after
    another: the job's own prefill begins once the prefill in progress is done,
    and delays every other slot of the replica that holds work by its length
    (ORCH-1996). Cost O(log slots) per job (ORCH-2760).
    """
    ran = _run(replicas, _queued(jobs), now)
    return None if ran is None else ran[0]


class RunningForecast:
    """:func:`simulate` one job at a time (:meth:`step`: the job's forecast) and, after
    the last job, per replica the forecast finish (ms from now) of each of its running
    tasks, in the order of ``running_ms`` (:meth:`finishes`, ORCH-2906): its ms left,
    later by the prefill of every job started on its replica while it still holds its
    slot (ORCH-1996); what a running task's client is told (ORCH-2907). It holds
    O(replicas + slots) whatever the number of jobs: the waiting loop's pass over a
    whole queue keeps no per-task object (issue #20, ORCH-2742)."""

    __slots__ = ("_held", "_sim")

    def __init__(self, replicas: Sequence[ReplicaLoad], now: float) -> None:
        self._held = [_Held(r) for r in replicas]
        self._sim = _Sim(replicas, now, self._held)

    def step(self, job: Job) -> Slot:
        return self._sim.step(0.0, job)

    def finishes(self) -> list[list[float]]:
        return [h.out for h in self._held]


def simulate_running(
    replicas: Sequence[ReplicaLoad], jobs: Iterable[Job], now: float
) -> tuple[list[Slot], list[list[float]]] | None:
    """:class:`RunningForecast` over ``jobs``: their forecasts as a list, and the
    running tasks' finishes."""
    if not replicas:
        return None
    run = RunningForecast(replicas, now)
    return [run.step(job) for job in jobs], run.finishes()


class _Held:
    """The lane of a replica (``_Lane``) replayed with its running tasks named, one job
    at a time (:meth:`feed`): each job takes an idle slot, else the slot that frees
    first (ties: the one held longest, as the lane's sorted list), then its prefill
    moves every slot still held (ORCH-1996); a running task's finish (``out``) is its
    slot's time when a job takes it, or at the end."""

    __slots__ = ("held", "idle", "out", "seq")

    def __init__(self, r: ReplicaLoad) -> None:
        out = self.out = [max(0.0, ms) for ms in r.running_ms]
        n = max(1, r.slots)
        kept = sorted(range(len(out)), key=lambda k: out[k])[:n]  # as the lane keeps them
        # [free time, arrival order, index into running_ms or -1 for a simulated job, the
        # busy slots its time was forecast at (ORCH-2970)]
        b0 = float(max(1, len(out)))
        self.held = [
            [out[k], float(seq), float(k), b0] for seq, k in enumerate(kept) if out[k] > 0.0
        ]
        self.idle, self.seq = n - len(self.held), float(len(kept))

    def feed(
        self,
        prefill: float,
        end: float,
        start: float | None = None,
        read: tuple[list[tuple[float, int]], float, int] | None = None,
    ) -> None:
        held, out = self.held, self.out
        busy = 1
        chain: list[tuple[float, int]] = []
        if read is not None:  # the lane's readings (ORCH-2970) and the job's busy slots
            chain, slow, busy = read
        if start is not None and chain:
            ts, t0 = _tick(start), _tick(chain[0][0])
            for h in held:
                if _tick(h[0]) > t0:
                    h[0] = read_end(h[0], int(h[3]), chain, slow)
                    if _tick(h[0]) > ts:
                        h[3] = float(chain[-1][1])
                    if h[2] >= 0:
                        out[int(h[2])] = h[0]
        # a job started after the first slot frees (held by the guard, ORCH-2933) finds
        # every slot that freed by then idle, as ``_Lane.take`` does
        if start is not None and _tick(start) > (
            0.0 if self.idle or not held else _tick(min(held)[0])
        ):
            t = _tick(start)
            freed = [h for h in held if _tick(h[0]) <= t]
            for h in freed:
                held.remove(h)
            self.idle += len(freed)
        if self.idle:
            self.idle -= 1
        elif held:
            held.remove(min(held))  # its time is its task's finish, already in ``out``
        for h in held:
            h[0] += prefill
            if h[2] >= 0:
                out[int(h[2])] = h[0]
        if end > 0.0:
            held.append([end, self.seq, -1.0, float(busy)])
            self.seq += 1.0
        else:
            self.idle += 1


def best_slot(
    replicas: Sequence[ReplicaLoad], ahead: Iterable[Job], job: Job, now: float
) -> Slot | None:
    """Forecast of ``job`` after the jobs ``ahead``: the earliest free slot of each
    replica, and of those the one where it would finish first (ORCH-1957)."""
    ran = _run(replicas, _queued(ahead), now)
    if ran is None:
        return None
    best: Slot | None = None
    floor = 0.0  # with the guard, not before the job ahead of it starts (ORCH-2933)
    if ran[0] and any(lane.limits is not None for lane in ran[1]):
        floor = ran[0][-1].start_ms
    for idx, lane in enumerate(ran[1]):
        start, finish, _ = lane.service(replicas[idx], job, now, floor)
        if best is None or finish < best.finish_ms:
            best = Slot(start, finish, idx)
    return best


def admits(finish_ms: float, deadline_ms: float, margin: float) -> bool:
    """The admission rule (ORCH-1958): refuse only when even a forecast ``margin``
    too pessimistic would miss the deadline, i.e. ``finish x (1 - margin) > deadline``."""
    return finish_ms * (1.0 - margin) <= deadline_ms
