"""The orchestrator: admission, dispatch, cancel and shutdown of tasks.

One instance per daemon. Everything runs on one event loop; the invariants
of ARCHITECTURE §3 rest on that: a state change and its event are appended
in the same step, so no interleaving can emit a token after a terminal event
(ORCH-1106, ORCH-2004).
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from llama_orch.core.adapter_api import Finished, TokenChunk
from llama_orch.core.api import (
    EndEvent,
    ErrorEvent,
    MetricsEvent,
    StartedEvent,
    TokenEvent,
)
from llama_orch.core.config import Config
from llama_orch.core.errors import (
    AdmissionRejected,
    ErrorCode,
    NotFound,
    OrchError,
    PoolUnready,
    WorkerReset,
)
from llama_orch.core.placement import Dispatch, Orphaned, next_dispatch
from llama_orch.core.predict import ShareTracker
from llama_orch.core.queue import PRIORITIES
from llama_orch.core.quota import Quotas
from llama_orch.core.replica import ReplicaSetKey, ReplicaState

from .admission import AdmissionMixin
from .catalog_api import CatalogService
from .metrics import Metrics
from .migration import Migrator
from .placer import Placer
from .policies import choose_replica, make_policy_host
from .pools import Pool, Replica
from .preemption import Preemptor
from .selftest import SelfTests
from .sessions import Session, SessionTable
from .stored import StoreBridge
from .tasks import TaskRecord, TaskStore
from .telemetry import EngineScraper, Gpu, log_task_end, model_state_samples
from .tracing import Tracing
from .waiting import waiting_loop
from .watchdog import watchdog_loop
from .workload import Workload

__all__ = ["Orchestrator"]

_log = logging.getLogger("llama_orch.orchestratord")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _pin_of(rec: TaskRecord) -> ReplicaSetKey | None:
    return rec.set_key  # set while queued only for pinned tasks (ORCH-1302)


class Orchestrator(AdmissionMixin):
    def __init__(self, config: Config) -> None:
        self.config = config
        sched = config.scheduling
        self.pools: dict[str, Pool] = {
            p.id: Pool(p, config.admission, scheduling=sched) for p in config.pools
        }
        self.quotas = Quotas(sched.tenants, sched.default_tenant, sched.priority_limits)
        self.shares = ShareTracker(sched.share_alpha)
        # (pool_id, priority) -> [met, total] (ORCH-1112, ORCH-7006)
        self._deadlines: dict[tuple[str, str], list[int]] = {
            (pool, p): [0, 0] for pool in self.pools for p in PRIORITIES
        }
        self.tasks = TaskStore(
            retention_s=config.admission.event_log_retention_s,
            max_tasks=config.admission.max_retained_tasks,
            on_finish=self.on_task_ended,
        )
        self.sessions = SessionTable(config.sessions)
        self.scraper = EngineScraper(
            self.pools.values(), config.observability.engine_scrape_interval_s
        )
        self.gpu = Gpu()
        self.tracing = Tracing(config.observability.otlp_traces_endpoint)
        self.metrics = Metrics(
            queue_depths=self._queue_depths,
            shares=lambda: [(v, {"tenant": t, "priority": p}) for t, p, v in self.shares.items()],
            deadlines_met=lambda: [
                (met / total, {"engine": self.pools[pid].engine, "pool_id": pid, "priority": p})
                for (pid, p), (met, total) in self._deadlines.items()
                if total
            ],
            kv_usage=self.scraper.kv_usage,
            model_states=lambda: model_state_samples(self.pools.values()),
            gpu_utilization=lambda: self.gpu.read(self.pools.values())[0],
            vram_used=lambda: self.gpu.read(self.pools.values())[1],
            prefix_hits=self.scraper.prefix_hits,  # ORCH-2322
        )
        self.placer = Placer(self.pools, self.metrics)  # ORCH-2310 (issue #17)
        self.migrator = Migrator(self.metrics)  # ORCH-2330 (issue #17)
        self.workload = Workload(sched.waiting, deadline_cv=sched.deadline_cv)
        self.catalog = CatalogService(config.catalog, self.metrics)  # issue #18
        self.policies = make_policy_host(config, self.metrics)  # ORCH-8540 (issue #16)
        self.preemptor = Preemptor(
            config.scheduling.preemption, self.workload.running, self.metrics
        )
        self.self_tests = SelfTests(
            enabled=config.observability.self_test,
            timeout_s=config.observability.self_test_timeout_s,
            telemetry_page=self.metrics.render,
        )
        for pool in self.pools.values():
            pool.gate = self.self_tests.gate  # ORCH-7050: checks before Ready
        self.self_tests.on_decode = lambda engine, ms: self.workload.seed(engine, overhead_ms=ms)
        # ORCH-2520: with a `state:` section the store holds queues and event logs
        self.state = StoreBridge(self, config.state) if config.state is not None else None
        self.accepting = True
        self._stopped = False
        self._loops: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for pool in self.pools.values():
            if self.state is not None:
                continue  # the store bridge dispatches (ORCH-2523)
            self._loops.append(
                asyncio.create_task(self._dispatch_loop(pool), name=f"dispatch-{pool.id}")
            )
            self._loops.append(  # ORCH-1961, ORCH-1965: queued events and bounded waits
                asyncio.create_task(waiting_loop(self, pool), name=f"waiting-{pool.id}")
            )
        self._loops.append(asyncio.create_task(self.scraper.run(), name="engine-scrape"))
        wd = self.config.scheduling.watchdog
        if wd.wall_timeout_s is not None or wd.idle_timeout_s is not None:
            self._loops.append(asyncio.create_task(watchdog_loop(self, wd), name="watchdog"))

    def on_replica_change(self, state: ReplicaState) -> None:
        pool = self.pools.get(state.pool_id)
        if pool is not None:
            pool.update(state)

    async def shutdown(self, grace_s: float) -> None:
        """Stop admission, let running tasks finish within ``grace_s``, end the rest."""
        if self._stopped:
            return
        self._stopped = True
        self.accepting = False
        if self.state is not None:
            self.state.stop_dispatching()  # queued tasks stay in the store (ORCH-2527)
        # ORCH-2413: woken by every phase change, no polling
        await self.tasks.wait_for(
            lambda: not any(t.state == "running" for t in self.tasks.active()), grace_s
        )
        runners = [t.runner for t in self.tasks.active() if t.runner]
        for rec in self.tasks.active():
            if self.state is not None and rec.state == "queued":
                continue  # still queued in the store: another instance, or the restart, runs it
            self.end(rec, self.error_event(rec, "orchestratord is shutting down"))
        await self.self_tests.aclose()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, *runners, return_exceptions=True)
        for pool in self.pools.values():
            for replica in pool.replicas.values():
                await replica.adapter.aclose()
        self.metrics.shutdown()
        if self.policies is not None:
            self.policies.close()
        self.gpu.close()
        await asyncio.to_thread(self.tracing.shutdown)  # flushes OTLP off the event loop

    def _queue_depths(self) -> list[tuple[int, dict[str, str]]]:
        return [
            (pool.queue.depth(p), {"engine": pool.engine, "pool_id": pool.id, "priority": p})
            for pool in self.pools.values()
            for p in PRIORITIES
        ]

    # ------------------------------------------------------------------ cancel

    def get(self, task_id: str) -> TaskRecord:
        rec = self.tasks.get(task_id)
        if rec is None:
            raise NotFound(f"unknown task {task_id}")
        return rec

    def cancel(self, task_id: str) -> None:
        """End the task now; the caller answers 204 only after this returned (ORCH-2004)."""
        rec = self.get(task_id)
        now = time.monotonic()
        canceled = EndEvent(
            tokens_out=rec.tokens_out,
            decode_ms=_ms(now - rec.first_token) if rec.first_token else 0,
            reason="canceled",
            tokens_in=rec.prompt_tokens,
            queue_wait_ms=_ms((rec.dispatched or now) - rec.created),
        )
        if self.end(rec, canceled):
            self.metrics.tasks_canceled.add(
                1, {"engine": rec.engine, "pool_id": rec.pool_id, "priority": rec.priority}
            )

    # ------------------------------------------------------------------ the one end

    def end(self, rec: TaskRecord, terminal: EndEvent | ErrorEvent) -> bool:
        """End ``rec`` from outside its runner (ORCH-2411): cancel, drain, watchdog,
        shutdown and bounded waits all come here. The terminal event is appended
        first, so nothing can follow it (ORCH-1106, ORCH-2004); then the runner is
        cancelled, which closes the engine stream and frees the slot in ``_release``.
        False when the task had already ended."""
        if rec.terminal:
            return False
        self.pools[rec.pool_id].queue.remove(rec)  # a queued task never reaches the engine
        ended = rec.finish(terminal)
        if rec.runner is not None:
            rec.runner.cancel()
        return ended

    @staticmethod
    def error_event(
        rec: TaskRecord,
        message: str,
        code: ErrorCode = ErrorCode.POOL_UNAVAILABLE,
        *,
        retriable: bool = True,
        retry_after_ms: int | None = None,
    ) -> ErrorEvent:
        """The ``error`` terminal of ``rec``, naming its engine and pool."""
        return ErrorEvent(
            code=code,
            message=message,
            engine=rec.engine,
            pool_id=rec.pool_id,
            retriable=retriable,
            retry_after_ms=retry_after_ms,
        )

    # ------------------------------------------------------------------ dispatch

    async def _dispatch_loop(self, pool: Pool) -> None:
        while True:
            await pool.wakeup.wait()
            pool.wakeup.clear()
            try:
                await self._dispatch_ready(pool)
            except Exception:
                # ORCH-2414: a bug in one step must not stop the pool's dispatching
                # for good; the next wakeup (a submit, a freed slot) tries again.
                _log.exception("dispatcher of pool %s: a dispatch step failed", pool.id)

    async def _dispatch_ready(self, pool: Pool) -> None:
        """Dispatch queued tasks of ``pool`` until none can be placed now."""
        while True:
            step = next_dispatch(
                pool.queue,
                self.workload.views(pool),
                _pin_of,
                self._affinity,
                # ORCH-2310: the pool's placement policy picks inside the set
                lambda t: self.placer.chooser(pool, t, self._affinity(t)),
            )
            if step is None:
                await self.preemptor.maybe_preempt(pool)
                return
            rec = step.item
            try:
                self._start(pool, step)
            except Exception as exc:
                # ORCH-2414: the task was taken off the queue; it gets its terminal
                # event instead of being lost, and the next tasks go on.
                _log.exception("dispatcher of pool %s: task %s failed", pool.id, rec.task_id)
                if rec.runner is None:
                    rec.finish(
                        self.error_event(
                            rec, f"internal error: {exc!r}", ErrorCode.INTERNAL, retriable=False
                        )
                    )

    def _start(self, pool: Pool, step: Dispatch[TaskRecord] | Orphaned[TaskRecord]) -> None:
        """Start one dispatch step: end an orphaned or expired task, or start its runner."""
        rec = step.item
        if isinstance(step, Orphaned):
            rec.fail(
                ErrorCode.POOL_UNAVAILABLE,
                "no Ready replica is left in the task's replica set",
                retriable=True,
            )
            return
        if rec.deadline is not None and time.monotonic() > rec.deadline:
            # ORCH-1006: expired in the queue, never reaches an engine
            rec.fail(ErrorCode.DEADLINE_UNMET, "deadline passed while queued", retriable=False)
            self._deadlines[pool.id, rec.priority][1] += 1
            return
        replica = pool.replicas[step.replica_id]
        if self.policies is not None:  # ORCH-8523: the placement policy's pick
            picked = choose_replica(self, pool, rec, step, self._affinity(rec))
            if picked is None:  # failed closed (ORCH-8550)
                rec.fail(
                    ErrorCode.POOL_UNAVAILABLE,
                    "the placement policy failed (on_error: closed)",
                    retriable=True,
                )
                return
            replica = picked
        self.placer.dispatched(pool, replica, rec)  # ORCH-2302, ORCH-2320
        rec.pinned = rec.set_key is not None
        rec.set_key = step.set_key
        self.launch(pool, replica, rec)

    def launch(self, pool: Pool, replica: Replica, rec: TaskRecord) -> None:
        """queued → running on ``replica``: reserve the slot and start the runner."""
        self.shares.observe(rec.priority, rec.tenant)
        replica.busy += 1
        try:
            rec.dispatch(replica.state.replica_id)
            rec.engine_version = replica.state.engine_version
            rec.dispatched = time.monotonic()
            rec.last_progress = None
            # this run's measurements for the service-time model (ORCH-1952)
            rec.run_first_token = rec.last_token = None
            rec.run_tokens_before, rec.busy_sum, rec.run_chunks = rec.engine_tokens, 0, 0
            self.workload.started(pool.id, replica.state.replica_id, rec)
            self.tracing.dispatched(rec, replica.state.replica_id, rec.engine_version)
        except BaseException:
            replica.busy -= 1  # no runner will release the slot
            self.workload.ended(pool.id, replica.state.replica_id, rec)
            raise
        rec.runner = asyncio.create_task(self._run(pool, replica, rec), name=f"task-{rec.task_id}")
        rec.runner.add_done_callback(lambda _t: self._release(pool, replica, rec))

    def _requeue(self, pool: Pool, replica: Replica, rec: TaskRecord, exc: OrchError) -> bool:
        """Put a task that never reached its engine back in the queue (ORCH-1117).

        A replica can die between the pool manager's last report and a dispatch;
        such a task failed only to connect, so it is retried (once more at most)
        on another replica, and the replica is kept out of placement until it
        answers again.
        """
        if rec.attempts >= 2:
            return False
        rec.attempts += 1
        pool.suspect(replica.state.replica_id, exc.message)
        if self.state is not None:  # the bridge gives it back to the store's front
            rec.requeue()
            self.tracing.requeued(rec, exc.message)
            return True
        set_key = rec.set_key
        if not rec.pinned:
            rec.set_key = None  # free again: any Ready set may take it
        try:
            displaced = pool.queue.push(rec, rec.priority, tenant=rec.tenant, deadline=rec.deadline)
        except AdmissionRejected:
            rec.set_key = set_key
            return False
        rec.requeue()
        self.tracing.requeued(rec, exc.message)
        self._displace(pool, displaced, rec.priority)
        _log.warning(
            "task %s requeued: replica %s unreachable", rec.task_id, replica.state.replica_id
        )
        return True

    def on_task_ended(self, rec: TaskRecord) -> None:
        """The one "task ended" hook (ORCH-2412), called once per task with its terminal
        event: every end is logged (ORCH-7030) and traced. A task that ended while
        queued (canceled, displaced, expired, orphaned) gives its session back the
        tokens reserved at admission (ORCH-1405); a task that ran settles its session
        when its runner is released (``_release``)."""
        log_task_end(rec, self.pools[rec.pool_id])
        self.tracing.ended(rec)
        if rec.session_key and rec.dispatched is None:
            ran = rec.preemptions > 0 or rec.migrations > 0  # it ran before it was requeued
            self.sessions.record(
                rec.session_key,
                None,
                rec.prompt_tokens if ran else 0,
                rec.tokens_out,
                reserved=rec.prompt_tokens + rec.request.max_tokens,
                engine_ms=rec.engine_ms_before,
                cost_per_token=rec.cost_per_token,
            )

    def _release(self, pool: Pool, replica: Replica, rec: TaskRecord) -> None:
        # A done-callback runs even when the runner was cancelled before it started.
        replica.busy -= 1
        self.workload.ended(pool.id, replica.state.replica_id, rec)
        self.preemptor.released(pool, rec)
        if rec.state == "queued":  # requeued or preempted: it will be dispatched again
            pool.wakeup.set()
            return
        if not rec.terminal:  # defensive: every dispatched task ends exactly once
            rec.finish(
                ErrorEvent(
                    code=ErrorCode.INTERNAL,
                    message="task ended without outcome",
                    engine=rec.engine,
                    pool_id=rec.pool_id,
                )
            )
        attrs = {
            "engine": rec.engine,
            "engine_version": rec.engine_version,
            "pool_id": rec.pool_id,
            "replica_id": replica.state.replica_id,
        }
        if rec.tokens_out:
            self.metrics.tokens_out.add(rec.tokens_out, attrs)
        self.catalog.task_ended(pool, replica.state, rec)  # per version (ORCH-3380)
        self.placer.finished(pool, replica, rec)  # ORCH-2302: prompt + answer
        engine_ms = _ms(time.monotonic() - rec.dispatched) if rec.dispatched else 0
        engine_ms += rec.engine_ms_before
        self.workload.observe(pool, replica, rec, time.monotonic())  # ORCH-1952
        if rec.deadline is not None:
            stats = self._deadlines[pool.id, rec.priority]
            stats[1] += 1
            stats[0] += rec.state == "completed" and (rec.finished_at or 0) <= rec.deadline
        if rec.session_key:
            self.sessions.record(
                rec.session_key,
                replica.state.replica_id,
                rec.prompt_tokens,
                rec.tokens_out,
                reserved=rec.prompt_tokens + rec.request.max_tokens,
                engine_ms=engine_ms,
                set_key=rec.set_key,
                cost_per_token=rec.cost_per_token,
            )
        pool.wakeup.set()

    def _affinity(self, rec: TaskRecord) -> str | None:
        s = self.sessions.get(rec.session_key) if rec.session_key else None
        return s.replica_id if s else None

    def _dispatch_metrics(
        self, pool: Pool, rec: TaskRecord, session: Session | None, replica_id: str
    ) -> MetricsEvent:
        """The first ``metrics`` frame: queue, KV warmth, deadline odds, budgets."""
        # the model of the replica it runs on (ORCH-1959)
        on_time = self.workload.dispatched(pool, pool.replicas[replica_id], rec, time.monotonic())
        tokens = ms = cost = None
        if session is not None:
            tokens, ms = self.sessions.remaining(session)
            cost = self.sessions.cost_remaining(session)
        return MetricsEvent(
            queue_depth=len(pool.queue),
            kv_warmth=bool(session and session.replica_id == replica_id),
            on_time_probability=on_time,
            budget_tokens_remaining=tokens,
            budget_time_ms_remaining=ms,
            budget_cost_remaining=cost,
        )

    def _complete(self, rec: TaskRecord, finished: Finished, attrs: dict[str, str]) -> None:
        end = time.monotonic()
        decode_ms = _ms(end - rec.first_token) if rec.first_token else 0
        if rec.finish(
            EndEvent(
                tokens_out=rec.tokens_out,
                decode_ms=decode_ms,
                reason=finished.reason,
                tokens_in=rec.prompt_tokens,
                queue_wait_ms=rec.queue_wait_ms,
                first_token_ms=rec.first_token_ms,
            )
        ):
            self.metrics.decode_ms.record(decode_ms, attrs)

    async def _run(self, pool: Pool, replica: Replica, rec: TaskRecord) -> None:
        st = replica.state
        attrs = {
            "engine": rec.engine,
            "engine_version": st.engine_version,
            "pool_id": pool.id,
            "replica_id": st.replica_id,
            "priority": rec.priority,
        }
        assert rec.dispatched is not None
        # ORCH-1903, ORCH-2330, ORCH-2530
        resuming = rec.preemptions > 0 or rec.migrations > 0 or rec.takeover
        if not resuming:
            rec.queue_wait_ms = _ms(rec.dispatched - rec.created)
        queue_wait_ms = rec.queue_wait_ms
        answered = False  # the engine sent its first event

        def start() -> None:
            # ``started`` is appended when the engine answered, so a task whose
            # replica turned out to be gone can go back to the queue unseen.
            if rec.takeover:  # ORCH-2530: continued here after a takeover
                rec.takeover = False  # a later preemption resumes as usual
                rec.append(MetricsEvent(resumed=True, tokens_out=rec.tokens_out))
                return
            if resuming and rec.migrations:  # ORCH-2331: the move was announced already
                return
            if resuming:  # ORCH-1903: announced once more as a metrics event only
                rec.append(MetricsEvent(preempted=False, queue_depth=len(pool.queue)))
                self.metrics.resumptions.add(
                    1,
                    {"engine": rec.engine, "engine_version": st.engine_version, "pool_id": pool.id},
                )
                return
            rec.append(
                StartedEvent(
                    queue_position=rec.queue_position,
                    predicted_start_ms=rec.predicted_start_ms,
                    queue_wait_ms=queue_wait_ms,
                    pool_id=pool.id,
                    replica_id=st.replica_id,
                    engine=rec.engine,
                    engine_version=st.engine_version,
                    model_digest=st.model_digest,
                )
            )
            session = self.sessions.get(rec.session_key) if rec.session_key else None
            first = self._dispatch_metrics(pool, rec, session, st.replica_id)
            rec.kv_warmth = first.kv_warmth
            rec.append(first)
            self.metrics.tasks_started.add(1, attrs)
            if rec.prompt_counted:
                self.metrics.tokens_in.add(
                    rec.prompt_tokens, {k: attrs[k] for k in attrs if k != "priority"}
                )

        # Keeping every token's text costs about as much memory as the event log;
        # only hard preemption (ORCH-1903) needs it (found by the stalled-reader test).
        hard_preemption = self.config.scheduling.preemption == "hard"
        request = rec.request
        if resuming:  # ORCH-1903: continue from the text the client already has
            request = msgspec.structs.replace(
                request,
                prompt=request.prompt + "".join(rec.text_out),
                max_tokens=max(1, request.max_tokens - rec.engine_tokens),
            )
        finished: Finished | None = None
        try:
            stream = replica.adapter.generate(request)
            try:
                async for ev in stream:
                    rec.last_progress = time.monotonic()
                    if not answered:
                        answered = True
                        start()
                    if isinstance(ev, TokenChunk):
                        # ORCH-1952: each chunk's arrival and the replica's busy slots
                        rec.last_token = rec.last_progress
                        if rec.run_first_token is None:
                            rec.run_first_token = rec.last_progress
                        rec.busy_sum += replica.busy
                        rec.run_chunks += 1
                        if rec.first_token is None:
                            rec.first_token = time.monotonic()
                            rec.first_token_ms = _ms(rec.first_token - rec.dispatched)
                            self.metrics.first_token_ms.record(rec.first_token_ms, attrs)
                        if not rec.append(TokenEvent(ev.text, rec.tokens_out, ev.logprobs)):
                            break  # canceled meanwhile: stop reading, close upstream
                        rec.tokens_out += 1
                        rec.engine_tokens += ev.n_tokens
                        if hard_preemption:  # only a resumption reads it (ORCH-8016)
                            rec.text_out.append(ev.text)
                    else:
                        finished = ev
                        if not rec.prompt_counted and ev.prompt_tokens and not resuming:
                            rec.prompt_tokens, rec.prompt_counted = ev.prompt_tokens, True
                            self.metrics.tokens_in.add(
                                ev.prompt_tokens, {k: attrs[k] for k in attrs if k != "priority"}
                            )
            finally:
                await stream.aclose()
            if finished is None:
                raise OrchError("engine stream ended without a final event", engine=rec.engine)
            self._complete(rec, finished, attrs)
        except asyncio.CancelledError:
            # cancel() or shutdown already appended the terminal event; a hard
            # preemption did not, and the task goes back to the queue.
            if rec.preempt_requested and not rec.terminal:
                if finished is not None:  # the engine was done before the interrupt
                    self._complete(rec, finished, attrs)
                else:
                    self.preemptor.requeue(pool, rec)
        except OrchError as exc:
            if answered and self.migrator.migrate(pool, replica, rec, exc):  # ORCH-2330
                return
            requeued = (
                isinstance(exc, (WorkerReset, PoolUnready))
                and not answered
                and not rec.terminal
                and self._requeue(pool, replica, rec, exc)
            )
            if not requeued:
                if not answered:
                    start()
                rec.fail(exc.code, exc.message, retriable=exc.retriable)
        except Exception as exc:
            _log.exception("task %s failed", rec.task_id)
            rec.fail(ErrorCode.INTERNAL, f"internal error: {exc!r}", retriable=False)
