"""What each replica is doing and how fast: the work-aware half of scheduling.

The orchestrator records which tasks run on each (pool, replica) and keeps a
:class:`~llama_orch.core.servicetime.ServiceModel` per replica, learned from
every run (ORCH-1950..1956). From these come the replica loads that placement
prefers (ORCH-1907) and every prediction (ORCH-1957): ``predicted_start_ms``,
backoff and ``Retry-After``, deadline feasibility at admission (ORCH-1006,
ORCH-1958), ``on_time_probability`` and the ETA of every queued task.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping

from llama_orch.core.backoff import (
    HORIZON,
    RESERVE_HORIZON_S,
    Reservation,
    ReservationBook,
    reservation,
    retry_turn,
)
from llama_orch.core.config import WaitingConfig
from llama_orch.core.errors import DeadlineUnmet
from llama_orch.core.eta import (
    Job,
    Pace,
    ReplicaLoad,
    RunningForecast,
    Slot,
    admits,
    best_slot,
    replica_holds,
    replica_pace,
    simulate,
    simulate_held,
)
from llama_orch.core.output_share import OutputShare
from llama_orch.core.placement import ReplicaView
from llama_orch.core.predict import on_time_probability
from llama_orch.core.queue import PRIORITIES
from llama_orch.core.replica import ReplicaSetKey
from llama_orch.core.servicetime import DEFAULT_PRIOR, Observation, Outcome, Prior, ServiceModel
from llama_orch.core.time_index import PromptIndex, Spans

from ._forecast_inputs import (
    Expect,
    budget,
    decoded_pace,
    guard_limits,
    job_of,
    jobs_of,
    keep_answered,
    model_terms,
    prefill_terms,
    prompt_indexes,
    tokens_left,
)
from ._forecast_inputs import tokens_in as _tokens_in
from ._quick_forecast import quick_slot
from .forecast_pass import ForecastPass
from .pools import Pool, Replica
from .tasks import TaskRecord

__all__ = ["Workload", "job_of", "tokens_left"]

_log = logging.getLogger("llama_orch.orchestratord")


# Bytes per prompt token (ORCH-1993): the prior, the bounds, the weight of a new sample.
BYTES_PER_TOKEN = 4.0
BYTES_PER_TOKEN_BOUNDS = (0.5, 16.0)
BYTES_PER_TOKEN_ALPHA = 0.1


# Tasks ahead of an admitted one that its forecast simulates exactly (ORCH-1957).
PREDICT_HORIZON = 256


class Workload:
    def __init__(
        self,
        waiting: WaitingConfig | None = None,
        *,
        deadline_cv: float = 0.25,
        guards: Mapping[str, float] | None = None,
    ) -> None:
        self.cfg = waiting or WaitingConfig()
        self.deadline_cv = deadline_cv
        # per pool its dispatch guard's factor (ORCH-2931); none with a store (ORCH-2934)
        self.guards = dict(guards or {})
        # per (pool, replica): its running tasks in dispatch order (ORCH-2950), its model
        self.running: dict[tuple[str, str], dict[TaskRecord, None]] = {}
        self._models: dict[tuple[str, str], ServiceModel] = {}  # ORCH-1950
        self._priors: dict[str, Prior] = {}  # per engine (ORCH-1954)
        self._log_bpt: dict[str, float] = {}  # per pool: log bytes per token (ORCH-1993)
        self._shares: dict[str, OutputShare] = {}  # per pool: output / budget (ORCH-2921)
        # Places kept for clients refused by a full queue, per pool (ORCH-1979).
        self.reservations: dict[str, ReservationBook] = {}

    def started(self, pool_id: str, replica_id: str, rec: TaskRecord) -> None:
        """``rec`` was dispatched to the replica (``rec.dispatched`` is set)."""
        running = self.running.setdefault((pool_id, replica_id), {})
        # the prompts its replica is still prefilling for others (ORCH-1990)
        pending = [_tokens_in(t) for t in running if t.run_first_token is None and t is not rec]
        rec.run_prefill_ahead = sum(pending)
        rec.run_prefill_ahead_sq = sum(n * n for n in pending)  # ORCH-2900
        running[rec] = None
        rec.run_prompt_tokens = n = _tokens_in(rec)  # as its dispatch is logged (ORCH-2926)
        model = self._models.get((pool_id, replica_id))
        if model is not None and rec.dispatched is not None:
            model.dispatched(n, rec.dispatched)

    def guard(self, pool: Pool) -> float | None:
        """The pool's dispatch guard factor (ORCH-2931); None: off, or a store (ORCH-2934)."""
        return self.guards.get(pool.id)

    def guard_holds(
        self, pool: Pool, rec: TaskRecord, now: float
    ) -> dict[str, tuple[float, float]]:
        """ORCH-2931: the Ready replicas closed to ``rec`` now, each with the ms until the
        tasks that close it end and ``rec``'s service there (:func:`replica_holds`)."""
        if self.guard(pool) is None:
            return {}
        ready = [rid for rid, r in pool.replicas.items() if r.state.ready]
        held = self._expect(pool, now, completed=False)  # as starts are told (ORCH-2933)
        loads = self.loads(pool, now, expect=held)
        got = replica_holds(loads, job_of(rec), now)
        return {rid: h for rid, h in zip(ready, got, strict=True) if h is not None}

    def ended(self, pool_id: str, replica_id: str, rec: TaskRecord) -> None:
        running = self.running.get((pool_id, replica_id))
        if running is not None and rec in running:
            del running[rec]  # its measured prefill span stays (ORCH-2926)
            keep_answered(self._models.get((pool_id, replica_id)), rec, running)

    def running_on(self, pool_id: str) -> list[TaskRecord]:
        """The tasks running on any replica of the pool."""
        return [t for (pid, _rid), tasks in self.running.items() if pid == pool_id for t in tasks]

    # ---------------------------------------------------------------- the model

    def seed(
        self, engine: str, *, overhead_ms: float | None = None, decode_ms: float | None = None
    ) -> None:
        """Set an engine's prior from its startup self-test (ORCH-1954); replicas
        with no sample of their own restart from it."""
        prior = self._priors.get(engine, DEFAULT_PRIOR)
        if overhead_ms is not None:
            prior = dataclasses.replace(prior, overhead_ms=overhead_ms)
        if decode_ms is not None:
            prior = dataclasses.replace(prior, decode_ms_per_token=decode_ms)
        self._priors[engine] = prior

    def prior(self, engine: str) -> Prior:
        return self._priors.get(engine, DEFAULT_PRIOR)

    def model(self, pool: Pool, replica_id: str, slots: int) -> ServiceModel:
        key = (pool.id, replica_id)
        m = self._models.get(key)
        prior = self._priors.get(pool.engine, DEFAULT_PRIOR)
        if m is None or m.slots != max(1, slots) or (m.observations == 0 and m.prior != prior):
            m = self._models[key] = ServiceModel(
                prior, half_life_s=self.cfg.model_half_life_s, slots=slots
            )
        return m

    def prompt_tokens_estimate(self, pool_id: str, prompt: str) -> int:
        """Tokens of a prompt admission did not count (ORCH-1118, ORCH-1993)."""
        log_bpt = self._log_bpt.get(pool_id)
        bpt = BYTES_PER_TOKEN if log_bpt is None else math.exp(log_bpt)
        return math.ceil(len(prompt.encode()) / bpt)

    def learn_bytes_per_token(self, rec: TaskRecord) -> None:
        if not rec.prompt_counted or rec.prompt_tokens <= 0:
            return
        lo, hi = BYTES_PER_TOKEN_BOUNDS
        bpt = min(max(len(rec.request.prompt.encode()) / rec.prompt_tokens, lo), hi)
        old = self._log_bpt.get(rec.pool_id)
        new = math.log(bpt)
        self._log_bpt[rec.pool_id] = (
            new if old is None else old + BYTES_PER_TOKEN_ALPHA * (new - old)
        )

    def observe(self, pool: Pool, replica: Replica, rec: TaskRecord, now: float) -> None:
        """Learn from the run of ``rec`` that just ended on ``replica`` (ORCH-1952)."""
        if rec.dispatched is None:
            return
        self.learn_bytes_per_token(rec)
        outcome: Outcome = (
            "completed"
            if rec.state == "completed"
            else "canceled"
            if rec.state == "canceled"
            else "failed"
        )
        if outcome != "failed":  # ORCH-2921: the share of its budget the task used
            share = self._shares.get(pool.id)
            if share is None:
                share = self._shares[pool.id] = OutputShare(self.cfg.model_half_life_s)
            share.observe(rec.engine_tokens, budget(rec), canceled=outcome == "canceled", now=now)
        tokens = rec.engine_tokens - rec.run_tokens_before
        ttft = None
        if rec.run_first_token is not None:
            ttft = (rec.run_first_token - rec.dispatched) * 1000
        decode = 0.0
        if rec.run_first_token is not None and rec.last_token is not None:
            decode = (rec.last_token - rec.run_first_token) * 1000
        busy = rec.busy_sum / rec.run_chunks if rec.run_chunks else 1.0
        model = self.model(pool, replica.state.replica_id, replica.state.slots)
        ahead, co_prefill = rec.run_prefill_ahead, 0
        ahead_sq, co_prefill_sq = rec.run_prefill_ahead_sq, 0  # per prompt (ORCH-2900)
        first = rec.run_first_token
        if first is not None:  # others' prompts around its own (ORCH-1990)
            log = model.prompt_index()  # one search a span (ORCH-2944)
            between, squares = log.between_squares(rec.dispatched, first)
            ahead += between
            ahead_sq += squares
            if rec.last_token is not None:
                co_prefill, co_prefill_sq = log.between_squares(first, rec.last_token)
        model.observe(
            Observation(
                rec.prompt_tokens if rec.prompt_counted else 0,
                ttft,
                decode,
                tokens,
                busy,
                outcome,
                ahead=ahead,
                co_prefill=co_prefill,
                ahead_sq=ahead_sq,
                co_prefill_sq=co_prefill_sq,
            ),
            now,
        )
        if (
            outcome == "completed"
            and rec.preemptions == 0
            and rec.predicted_service_ms
            and rec.last_token is not None
        ):
            model.observe_error(
                rec.predicted_service_ms, (rec.last_token - rec.dispatched) * 1000, now
            )

    # ---------------------------------------------------------------- forecasts

    def loads(
        self,
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
        guard = self.guard(pool)  # ORCH-2933: the running tasks' limits, with the guard
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
                log = model.prompt_index()  # O(log) a query below (issue #20)
                # the prefilling tasks' ms to their first token, (dispatch, prompt tokens)
                ttfts, prefilling, pending = prefill_terms(running, p, log, now)
                # built at the first running task that has decoded (ORCH-2941)
                indexes: tuple[PromptIndex, PromptIndex, Spans, Spans] | None = None
                busy_now = max(1, len(running))
                # ORCH-2941: ``model.decode_ms_per_token(busy_now, now, p, ctx)`` with its
                # busy slots' term, the same for every task, computed once
                busy_c = min(max(busy_now, 1.0), float(model.slots))
                dpt, dctx, dcap = p.decode_ms_per_token, p.decode_ctx, p.decode_cap
                slowed = dpt * p.slowdown * (busy_c - 1.0)
                share, told, completed = (None, now, False) if expect is None else expect
                lefts: dict[tuple[int, int], tuple[int, int]] = {}  # (budget, tokens): left
                for t in running:
                    # its pace at its context: prompt, tokens so far, half of those left
                    bud, so_far_all, tin = budget(t), t.engine_tokens, _tokens_in(t)
                    got = lefts.get((bud, so_far_all))  # tasks alike: asked once (ORCH-2941)
                    if got is None:
                        left_t = max(0, bud - so_far_all)  # ``tokens_left``
                        n = (  # ORCH-2922: ``expected_left``
                            left_t
                            if share is None
                            else share.expected_left(bud, so_far_all, told, completed=completed)
                        )
                        lefts[bud, so_far_all] = (left_t, n)
                    else:
                        left_t, n = got
                    ctx = tin + so_far_all + left_t / 2  # ORCH-2901
                    per = min(dpt + dctx * max(0.0, ctx), dcap) + slowed
                    ms = n * per
                    pc: Pace | None = None
                    if t.run_first_token is None and t.dispatched is not None:
                        # its prompt is batched with the others pending: its first token
                        # comes when the replica's prefill in progress ends (ORCH-1996);
                        # a late first token does not slow its decode (ORCH-2910)
                        ms = max(0.0, ttfts[id(t)], pending)
                        ms += max(0, n - 1) * per
                    elif t.run_first_token is not None and t.last_token is not None:
                        so_far = so_far_all - t.run_tokens_before
                        if so_far >= 2:  # no pace before two tokens (``live_pace``, ORCH-2941)
                            if indexes is None:
                                indexes = prompt_indexes(running, prefilling, now, model)
                            pace = decoded_pace(
                                t, so_far, model, p, log, indexes, now, busy_now, per
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
            limits = None if guard is None else guard_limits(running, now)  # as ``left``
            rpace, prefill = replica_pace(paces), max(0.0, pending)
            out.append(ReplicaLoad(model, st.slots, left, rpace, prefill, limits, guard))
        return out

    def _ahead(self, pool: Pool, priority: str | None, now: float) -> Iterator[Job]:
        rank = PRIORITIES.index(priority) if priority is not None else len(PRIORITIES)
        for t in pool.queue:
            if PRIORITIES.index(t.priority) <= rank:
                yield job_of(t, None, now)

    def forecast(
        self,
        pool: Pool,
        job: Job,
        priority: str | None,
        now: float | None = None,
        pin: ReplicaSetKey | None = None,
    ) -> Slot | None:
        """Start and finish of a new task after the queued work of its priority and
        above, on the replica where it finishes first (ORCH-1957)."""
        now = time.monotonic() if now is None else now
        return best_slot(self.loads(pool, now, pin), self._ahead(pool, priority, now), job, now)

    def check_deadline(self, pool: Pool, deadline_ms: int | None, job: Job, priority: str) -> None:
        """ORCH-1006, ORCH-1958: refuse when even a forecast ``deadline_margin`` too
        pessimistic misses the deadline; the refusal logs the forecast's inputs."""
        if deadline_ms is None:
            return
        now = time.monotonic()
        slot = self.forecast(pool, job, priority, now)
        if slot is None or admits(slot.finish_ms, deadline_ms, self.cfg.deadline_margin):
            return
        loads = self.loads(pool, now)
        _log.info(
            "deadline refused: predicted finish %.0f ms (start %.0f ms) > deadline %d ms"
            " / (1 - margin %.2f); job %s; queued ahead %d; replicas %s",
            slot.finish_ms, slot.start_ms, deadline_ms, self.cfg.deadline_margin,
            job, sum(1 for _ in self._ahead(pool, priority, now)),
            [(r.model.params(now), r.slots, [round(x) for x in r.running_ms]) for r in loads],
            extra={"pool_id": pool.id},
        )  # fmt: skip
        raise DeadlineUnmet(
            f"predicted finish in {slot.finish_ms:.0f} ms (start in {slot.start_ms:.0f} ms)"
            f" exceeds deadline_ms={deadline_ms} - at `$.deadline_ms`",
            pool_id=pool.id,
            engine=pool.engine,
        )

    def queue_forecast(self, pool: Pool, now: float) -> list[tuple[TaskRecord, int, Slot]]:
        """``(task, position, forecast)`` of every queued task, in serving order."""
        out: list[tuple[TaskRecord, int, Slot]] = []
        self.forecasts(pool, now, lambda t, i, s: out.append((t, i, s)))
        return out

    def _expect(self, pool: Pool, now: float, *, completed: bool) -> Expect:
        """ORCH-2922: the pool's shares for the slots others hold (``completed`` False:
        a start) or for a task's own tokens (True: a finish); None before any run."""
        share = self._shares.get(pool.id)
        return None if share is None else (share, now, completed)

    def forecasts(
        self, pool: Pool, now: float, each: Callable[[TaskRecord, int, Slot], None]
    ) -> list[tuple[TaskRecord, float]] | None:
        """``each(task, position, forecast)`` of every queued task in serving order as the
        simulation reaches it (ORCH-2742: no per-task list), then from the same simulation
        the forecast finish (ms from now) of every task running on a Ready replica
        (ORCH-2906, ORCH-2907); None with no Ready replica."""
        run = self.forecast_pass(pool, now)
        if run is None:
            return None
        for i, t in enumerate(run.queued):
            each(t, i, run.step(t))
        return run.finishes()

    def forecast_pass(self, pool: Pool, now: float) -> ForecastPass | None:
        """The pass of :meth:`forecasts` over a snapshot of the queue, to step by hand
        (ORCH-1125, ORCH-2742); None with no Ready replica."""
        queued = list(pool.queue)
        told = self._expect(pool, now, completed=True)  # finishes (ORCH-2922)
        loads = self.loads(pool, now, expect=told)
        if not loads:
            return None
        held = self._expect(pool, now, completed=False)  # starts: others' slots held
        starts = None
        if held is not None and queued and held[0].cancels(now):
            starts = RunningForecast(self.loads(pool, now, expect=held), now)
        # the running tasks in the order ``loads`` read them (same sets, no await between)
        ready = (rid for rid, r in pool.replicas.items() if r.state.ready)
        names = [list(self.running.get((pool.id, rid), ())) for rid in ready]
        run = RunningForecast(loads, now)
        return ForecastPass(run, starts, (told, held), names, queued, now, self.guard(pool))

    def predicted(
        self, pool: Pool, rec: TaskRecord, now: float | None = None, position: int | None = None
    ) -> tuple[Slot | None, bool | None]:
        """Start, finish and told hold (ORCH-2937) of an admitted task in serving order.

        The tasks ahead are simulated exactly up to ``PREDICT_HORIZON`` of them; beyond
        that the rest are taken to pass at the simulated tasks' mean service time over
        the pool's slots, so one admission costs O(horizon) simulated tasks instead of
        the whole queue (ORCH-1957; with the whole queue, admission fell from 39 to 7
        tasks/s between 1,000 and 6,000 queued tasks). ``position``: its place in the
        queue if the caller has it (ORCH-2944: admission computed it just before).
        """
        now = time.monotonic() if now is None else now
        if position is None:
            position = pool.queue.position(rec)
        if position < 0:
            return None, None
        held = self._expect(pool, now, completed=False)  # ORCH-2922
        ahead = jobs_of(itertools.islice(pool.queue, min(position, PREDICT_HORIZON)), held, now)
        return self._forecast(pool, rec, position, ahead, now)

    def predicted_at(self, pool: Pool, rec: TaskRecord, position: int, now: float) -> Slot | None:
        """:meth:`predicted` of a task queued in a state store at ``position`` (ORCH-2561):
        the requests ahead are in the store, so they are taken to be like this one."""
        ahead = [job_of(rec, self._expect(pool, now, completed=False))] * min(
            position, PREDICT_HORIZON
        )
        return self._forecast(pool, rec, position, ahead, now)[0]

    def _forecast(
        self, pool: Pool, rec: TaskRecord, position: int, ahead: list[Job], now: float
    ) -> tuple[Slot | None, bool | None]:
        trace: list[list[tuple[object, ...]]] | None = (
            [] if _log.isEnabledFor(logging.DEBUG) else None
        )
        # ORCH-2922: others' slots held for their expected tokens, its own finish told
        jobs = [*ahead, job_of(rec, self._expect(pool, now, completed=True), now)]
        if trace is None and position == len(ahead) and self.guard(pool) is None:
            ready = [(rid, r) for rid, r in pool.replicas.items() if r.state.ready]
            if len(ready) == 1:  # ORCH-2944: idle slots for every job, no simulation
                rid, st = ready[0][0], ready[0][1].state
                running = self.running.get((pool.id, rid), ())
                quick = quick_slot(self.model(pool, rid, st.slots), st.slots, running, jobs, now)
                if quick is not None:
                    return quick, None  # no guard: no hold told
        loads = self.loads(pool, now, trace=trace, expect=self._expect(pool, now, completed=False))
        slots, raised = simulate_held(loads, jobs, now)
        if not slots:
            return None, None
        slot = slots[-1]
        if trace is not None:  # ORCH-1994: the terms of a queued task's forecast start
            _log.debug(
                "forecast: task %s position %d start %.0f finish %.0f; ahead %s;"
                " (pace, prefill ms, overhead, prefill/token, prefill/token^2, decode/token,"
                " slowdown, decode/token/context) %s;"
                " running (task, tokens left, decoding, ratio, weight, ms left) %s",
                rec.task_id[:8], position, slot.start_ms, slot.finish_ms,
                [(j.tokens_in, j.tokens_out, round(s.start_ms), round(s.finish_ms))
                 for j, s in zip(ahead, slots, strict=False)],
                [(round(r.pace, 2), round(r.prefill_ms), *model_terms(r.model.params(now)))
                 for r in loads], trace,
                extra={"pool_id": pool.id},
            )  # fmt: skip
        extra = position - len(ahead)
        if extra > 0:
            total = sum(max(1, r.slots) for r in loads)
            mean = sum(s.finish_ms - s.start_ms for s in slots[:-1]) / max(1, len(ahead))
            shift = extra * mean / max(1, total)
            slot = Slot(slot.start_ms + shift, slot.finish_ms + shift, slot.replica)
        return slot, (raised if self.guard(pool) is not None else None)  # ORCH-2937

    def holding(self, pool: Pool, key: str | None, now: float) -> tuple[Reservation | None, int]:
        """The earliest reservation of ``key`` in ``pool`` (None if it holds none or
        ``key`` is None) and how many places are held now for the other refused
        clients (ORCH-1980, ORCH-1981)."""
        book = self.reservations.get(pool.id)
        return (None, 0) if book is None else book.holding(key, now)

    def release(self, pool: Pool, kept: Reservation) -> None:
        """Its client was admitted: the reservation is used (ORCH-1980)."""
        book = self.reservations.get(pool.id)
        if book is not None and kept in book.outstanding(time.monotonic()):
            book.remove(kept)

    def retry_after_ms(
        self, pool: Pool, job: Job | None = None, key: str | None = None, *, full: bool = False
    ) -> int:
        """The delay told to a client refused by ``pool`` (ORCH-1957, ORCH-1970..1976).

        Refused by a full queue (``full``: its queued tasks and held places, ORCH-1981)
        with its retries identified (ORCH-1979): when
        the place that opens for it after the places reserved for the clients
        refused before it opens (:func:`~llama_orch.core.backoff.retry_turn`); with
        ``key`` (the refused request's, ORCH-1979) that place is reserved for it if
        it is at most 120 s ahead (its client, told at most 60 s, waits the rest in
        the queue, ORCH-1984). ``job`` is the refused task's size (the last
        queued task's if unknown). Otherwise (a quota, or a client that did not
        identify its retries): when the first queued task starts, or the next slot
        frees. At least 100 ms.
        Every refusal path (OrchQueue v1 and the OpenAI-compatible API's
        ``retry-after-ms``) calls this.
        """
        now = time.monotonic()
        ahead = self._expect(pool, now, completed=False)  # a start: others' slots (ORCH-2922)
        loads = self.loads(pool, now, expect=ahead)
        if not loads:
            return 1000
        capacity = pool.queue.capacity
        queued = [job_of(t, ahead, now) for t in itertools.islice(pool.queue, HORIZON + 2)]
        if full:  # not a quota's refusal: that waits for the tenant, not for a place
            book = self.reservations.setdefault(pool.id, ReservationBook())
            held = book.held(now)
            reserved = book.outstanding(now)
            if job is None:
                job = queued[-1] if queued else Job(0, 1)
            turn = retry_turn(loads, queued, len(pool.queue), reserved, job, capacity, now)
            assert turn is not None
            place, told = turn
            kept = key is not None and place <= RESERVE_HORIZON_S * 1000  # ORCH-1984
            if kept:
                assert key is not None
                book.add(reservation(key, now + place / 1000, now + told / 1000, now, job))
            _log.debug(  # ORCH-1976
                "retry turn: told %.0f ms, place opens in %.0f ms (%s); queued %d,"
                " reserved %d (held %d), replicas %s",
                told, place, "reserved" if kept else "not reserved", len(pool.queue),
                len(reserved), held,
                [(round(r.pace, 2), [round(x) for x in r.running_ms]) for r in loads],
                extra={"pool_id": pool.id},
            )  # fmt: skip
            return max(100, math.ceil(told))
        if not queued:  # refused for another reason: the next slot to free
            ms = min(
                min(r.running_ms, default=0.0) if len(r.running_ms) >= r.slots else 0.0
                for r in loads
            )
            return max(100, int(ms))
        slots = simulate(loads, queued[:1], now)
        assert slots is not None
        return max(100, int(slots[0].start_ms))

    def dispatched(self, pool: Pool, replica: Replica, rec: TaskRecord, now: float) -> float | None:
        """Forecast the run that starts now on ``replica`` (kept to learn the forecast's
        error) and return P(the task ends before its deadline), ORCH-1959."""
        st = replica.state
        model = self.model(pool, st.replica_id, st.slots)
        busy = max(1, len(self.running.get((pool.id, st.replica_id), ())))
        expected = model.service_ms(
            _tokens_in(rec),
            tokens_left(rec),
            busy,
            now,
            rec.run_prefill_ahead,
            ahead_sq=rec.run_prefill_ahead_sq,
        )
        rec.predicted_service_ms = expected
        if rec.deadline is None:
            return None
        remaining = (rec.deadline - now) * 1000
        return on_time_probability(remaining, expected, model.cv(self.deadline_cv, now))

    def views(self, pool: Pool) -> list[ReplicaView]:
        """Replica views with each replica's assigned work (ORCH-1907)."""
        views = pool.views()
        for n, v in enumerate(views):
            tasks = self.running.get((pool.id, v.replica_id))
            if tasks:
                # the constructor, not dataclasses.replace (about 4x its cost), at every dispatch
                load = sum(tokens_left(t) for t in tasks)
                views[n] = ReplicaView(v.replica_id, v.set_key, v.ready, v.slots, v.busy, load)
        return views
