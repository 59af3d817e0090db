"""One run of a dispatched task on its replica's engine (ORCH-2421, ORCH-1903).

:class:`Runner` holds what every run needs; :class:`TaskRun` is one run, a
short-lived object whose named steps were one 120-line coroutine:

- :meth:`TaskRun._request`: the request, or its continuation when the task
  resumes after a preemption, a migration or a takeover;
- :meth:`TaskRun._stream`: read the engine's events, :meth:`_on_token` and
  :meth:`_on_finished` for each;
- :meth:`TaskRun._announce`: ``started`` + the first ``metrics`` frame, sent
  when the engine answered, so a task whose replica turned out to be gone can
  go back to the queue unseen (or a ``metrics`` frame only, when resuming);
- :meth:`TaskRun._complete`: the ``end`` terminal;
- :meth:`TaskRun._on_cancelled` and :meth:`TaskRun._on_error`: a hard
  preemption goes back to the queue, a mid-stream reset migrates, an
  unreachable replica before any event requeues (ORCH-1117), anything else
  ends the task with its typed error.

The dispatcher starts a run as the record's ``runner`` and releases its slot
when the run is over, whatever the way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import msgspec
from llama_orch.core.adapter_api import (
    ENGINE_TRACE_HEADERS,
    Finished,
    GenerateRequest,
    TokenChunk,
)
from llama_orch.core.api import EmbeddingEvent, EndEvent, MetricsEvent, StartedEvent, TokenEvent
from llama_orch.core.errors import AdmissionRejected, ErrorCode, OrchError, PoolUnready, WorkerReset

from .admission import displace
from .metrics import Metrics
from .migration import Migrator
from .pools import Pool, Replica
from .preemption import Preemptor
from .sessions import SessionTable
from .tasks import TaskRecord
from .tracing import Tracing
from .workload import Workload

__all__ = ["Runner", "TaskRun"]

_log = logging.getLogger("llama_orch.orchestratord")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class Runner:
    """What every task run needs; one per orchestrator."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        sessions: SessionTable,
        workload: Workload,
        preemptor: Preemptor,
        migrator: Migrator,
        tracing: Tracing,
        hard_preemption: bool,
        stored: bool,
    ) -> None:
        self.metrics = metrics
        self.sessions = sessions
        self.workload = workload
        self.preemptor = preemptor
        self.migrator = migrator
        self.tracing = tracing
        # Keeping every token's text costs about as much memory as the event log;
        # only hard preemption (ORCH-1903) needs it (found by the stalled-reader test).
        self.hard_preemption = hard_preemption
        self.stored = stored  # with a state store, the store requeues (ORCH-2523)

    def run(self, pool: Pool, replica: Replica, rec: TaskRecord) -> Coroutine[Any, Any, None]:
        """The coroutine of one run of ``rec`` on ``replica``."""
        return TaskRun(self, pool, replica, rec)()


class TaskRun:
    def __init__(self, runner: Runner, pool: Pool, replica: Replica, rec: TaskRecord) -> None:
        assert rec.dispatched is not None
        self.runner, self.pool, self.replica, self.rec = runner, pool, replica, rec
        st = replica.state
        self.attrs = {
            "engine": rec.engine,
            "engine_version": st.engine_version,
            "pool_id": pool.id,
            "replica_id": st.replica_id,
            "priority": rec.priority,
        }
        # ORCH-1903, ORCH-2330, ORCH-2530
        self.resuming = rec.preemptions > 0 or rec.migrations > 0 or rec.takeover
        if not self.resuming:
            rec.queue_wait_ms = _ms(rec.dispatched - rec.created)
        self.queue_wait_ms = rec.queue_wait_ms
        self.answered = False  # the engine sent its first event
        self.finished: Finished | None = None

    async def __call__(self) -> None:
        rec = self.rec
        if self.runner.tracing.enabled:  # ORCH-7044: this run's engine requests join its trace
            ENGINE_TRACE_HEADERS.set(self.runner.tracing.engine_headers(rec))
        try:
            if rec.request.inputs:  # an `embedding` task (ORCH-1013)
                await self._embed(rec.request.inputs)
                return
            await self._stream(self._request())
            if self.finished is None:
                raise OrchError("engine stream ended without a final event", engine=rec.engine)
            self._complete(self.finished)
        except asyncio.CancelledError:
            self._on_cancelled()
        except OrchError as exc:
            self._on_error(exc)
        except Exception as exc:
            _log.exception("task %s failed", rec.task_id)
            rec.fail(ErrorCode.INTERNAL, f"internal error: {exc!r}", retriable=False)

    # ------------------------------------------------------------------ the stream

    def _request(self) -> GenerateRequest:
        request = self.rec.request
        if self.resuming:  # ORCH-1903: continue from the text the client already has
            request = msgspec.structs.replace(
                request,
                prompt=request.prompt + "".join(self.rec.text_out or ()),
                max_tokens=max(1, request.max_tokens - self.rec.engine_tokens),
            )
        if self.rec.engine_slot is not None:  # ORCH-2356: the slot rules' pin
            request = msgspec.structs.replace(
                request,
                engine_slot=self.rec.engine_slot,
                engine_slot_source=self.rec.engine_slot_source,  # ORCH-2369
            )
        return request

    async def _stream(self, request: GenerateRequest) -> None:
        stream = self.replica.adapter.generate(request)
        try:
            async for ev in stream:
                self.rec.last_progress = time.monotonic()
                if not self.answered:
                    self.answered = True
                    self._announce()
                if isinstance(ev, TokenChunk):
                    if not self._on_token(ev):
                        break  # canceled meanwhile: stop reading, close upstream
                else:
                    self._on_finished(ev)
        finally:
            await stream.aclose()

    async def _embed(self, inputs: tuple[str, ...]) -> None:
        """One ``embed`` call for all the task's inputs on its slot, then one
        ``embedding`` event per input and the end (ORCH-1013)."""
        rec, runner = self.rec, self.runner
        out = await self.replica.adapter.embed(list(inputs))
        if len(out.vectors) != len(inputs):
            raise OrchError(
                f"the engine returned {len(out.vectors)} vectors for {len(inputs)} inputs",
                engine=rec.engine,
            )
        self.answered = True
        if out.prompt_tokens:
            rec.prompt_tokens, rec.prompt_counted = out.prompt_tokens, True
        self._announce()  # counts tokens_in_total once the engine's count is known
        for i, vector in enumerate(out.vectors):
            if not rec.append(EmbeddingEvent(index=i, vector=vector)):
                return  # canceled meanwhile
        runner.metrics.embeddings.add(
            1, {"engine": rec.engine, "pool_id": self.pool.id, "api": rec.api}
        )
        self._complete(Finished(reason="stop", tokens_generated=0, prompt_tokens=out.prompt_tokens))

    def _on_token(self, ev: TokenChunk) -> bool:
        """Append one token; False when the task has ended meanwhile."""
        rec, runner = self.rec, self.runner
        # ORCH-1952: each chunk's arrival and the replica's busy slots
        rec.last_token = rec.last_progress
        if rec.run_first_token is None:
            rec.run_first_token = rec.last_progress
        rec.busy_sum += self.replica.busy
        rec.run_chunks += 1
        if rec.first_token is None:
            assert rec.dispatched is not None
            rec.first_token = time.monotonic()
            rec.first_token_ms = _ms(rec.first_token - rec.dispatched)
            runner.metrics.first_token_ms.record(rec.first_token_ms, self.attrs)
        if not rec.append(TokenEvent(ev.text, rec.tokens_out, ev.logprobs)):
            return False
        rec.tokens_out += 1
        rec.engine_tokens += ev.n_tokens
        if runner.hard_preemption:  # only a resumption reads it (ORCH-8016)
            if rec.text_out is None:  # ORCH-2771: made by the first token that needs it
                rec.text_out = []
            rec.text_out.append(ev.text)
        return True

    def _on_finished(self, ev: Finished) -> None:
        rec = self.rec
        self.finished = ev
        rec.engine_slot_used = ev.engine_slot  # ORCH-2351
        if not rec.prompt_counted and ev.prompt_tokens and not self.resuming:
            rec.prompt_tokens, rec.prompt_counted = ev.prompt_tokens, True
            self.runner.metrics.tokens_in.add(ev.prompt_tokens, self._unprioritized())

    def _unprioritized(self) -> dict[str, str]:
        return {k: v for k, v in self.attrs.items() if k != "priority"}

    # ------------------------------------------------------------------ announcing

    def _announce(self) -> None:
        """The engine answered: tell the client the task runs (or runs again)."""
        rec = self.rec
        if rec.takeover:  # ORCH-2530: continued here after a takeover
            rec.takeover = False  # a later preemption resumes as usual
            rec.append(MetricsEvent(resumed=True, tokens_out=rec.tokens_out))
            return
        if self.resuming and rec.migrations:  # ORCH-2331: the move was announced already
            return
        if self.resuming:  # ORCH-1903: announced once more as a metrics event only
            rec.append(MetricsEvent(preempted=False, queue_depth=len(self.pool.queue)))
            self.runner.metrics.resumptions.add(
                1,
                {
                    "engine": rec.engine,
                    "engine_version": self.replica.state.engine_version,
                    "pool_id": self.pool.id,
                },
            )
            return
        self._announce_started()

    def _announce_started(self) -> None:
        rec, st, runner = self.rec, self.replica.state, self.runner
        rec.append(
            StartedEvent(
                queue_position=rec.queue_position,
                predicted_start_ms=rec.predicted_start_ms,
                queue_wait_ms=self.queue_wait_ms,
                pool_id=self.pool.id,
                replica_id=st.replica_id,
                engine=rec.engine,
                engine_version=st.engine_version,
                model_digest=st.model_digest,
            )
        )
        first = self._first_metrics()
        rec.kv_warmth = first.kv_warmth
        rec.append(first)
        runner.metrics.tasks_started.add(1, self.attrs)
        if rec.prompt_counted:
            runner.metrics.tokens_in.add(rec.prompt_tokens, self._unprioritized())

    def _first_metrics(self) -> MetricsEvent:
        """The first ``metrics`` frame: queue, KV warmth, deadline odds, budgets."""
        rec, pool, runner = self.rec, self.pool, self.runner
        replica_id = self.replica.state.replica_id
        session = runner.sessions.get(rec.session_key) if rec.session_key else None
        # the model of the replica it runs on (ORCH-1959)
        on_time = runner.workload.dispatched(pool, pool.replicas[replica_id], rec, time.monotonic())
        tokens = ms = cost = None
        if session is not None:
            tokens, ms = runner.sessions.remaining(session)
            cost = runner.sessions.cost_remaining(session)
        return MetricsEvent(
            queue_depth=len(pool.queue),
            kv_warmth=bool(session and session.replica_id == replica_id),
            on_time_probability=on_time,
            budget_tokens_remaining=tokens,
            budget_time_ms_remaining=ms,
            budget_cost_remaining=cost,
        )

    # ------------------------------------------------------------------ endings

    def _complete(self, finished: Finished) -> None:
        rec = self.rec
        decode_ms = _ms(time.monotonic() - rec.first_token) if rec.first_token else 0
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
            self.runner.metrics.decode_ms.record(decode_ms, self.attrs)

    def _on_cancelled(self) -> None:
        # cancel() or shutdown already appended the terminal event; a hard
        # preemption did not, and the task goes back to the queue.
        rec = self.rec
        if rec.preempt_requested and not rec.terminal:
            if self.finished is not None:  # the engine was done before the interrupt
                self._complete(self.finished)
            else:
                self.runner.preemptor.requeue(self.pool, rec)

    def _on_error(self, exc: OrchError) -> None:
        rec = self.rec
        if self.answered and self.runner.migrator.migrate(
            self.pool, self.replica, rec, exc
        ):  # ORCH-2330
            return
        requeued = (
            isinstance(exc, (WorkerReset, PoolUnready))
            and not self.answered
            and not rec.terminal
            and self._requeue_unreachable(exc)
        )
        if not requeued:
            if not self.answered:
                self._announce()
            rec.fail(exc.code, exc.message, retriable=exc.retriable)

    def _requeue_unreachable(self, exc: OrchError) -> bool:
        """Put a task that never reached its engine back in the queue (ORCH-1117).

        A replica can die between the pool manager's last report and a dispatch;
        such a task failed only to connect, so it is retried (once more at most)
        on another replica, and the replica is kept out of placement until it
        answers again.
        """
        rec, pool, runner = self.rec, self.pool, self.runner
        replica_id = self.replica.state.replica_id
        if rec.attempts >= 2:
            return False
        rec.attempts += 1
        pool.suspect(replica_id, exc.message)
        if runner.stored:  # the store bridge gives it back to the store's front
            rec.requeue()
            runner.tracing.requeued(rec, exc.message)
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
        runner.tracing.requeued(rec, exc.message)
        displace(runner.metrics, pool, displaced, rec.priority)
        _log.warning("task %s requeued: replica %s unreachable", rec.task_id, replica_id)
        return True
