"""How a task ends: the one end path and the one "task ended" hook (ORCH-2411, ORCH-2412).

A task ends either inside its runner (the engine finished, failed, or the run
was requeued and later ends elsewhere) or from outside it: cancel, drain,
watchdog, shutdown, bounded waits and a lost store lease all call
:meth:`Ending.end`. Whatever the way, the record's lifecycle appends exactly
one terminal event and then calls :meth:`Ending.on_task_ended` once.
"""

from __future__ import annotations

import time

from llama_orch.core.api import EndEvent, ErrorEvent
from llama_orch.core.errors import ErrorCode

from .metrics import Metrics
from .pools import Pool
from .sessions import SessionTable
from .tasks import TaskRecord
from .telemetry import log_task_end
from .tracing import Tracing

__all__ = ["Ending", "canceled_event", "error_event"]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


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


def canceled_event(rec: TaskRecord, now: float) -> EndEvent:
    """The ``end`` terminal of a task canceled at ``now`` (ORCH-2004)."""
    return EndEvent(
        tokens_out=rec.tokens_out,
        decode_ms=_ms(now - rec.first_token) if rec.first_token else 0,
        reason="canceled",
        tokens_in=rec.prompt_tokens,
        queue_wait_ms=_ms((rec.dispatched or now) - rec.created),
    )


class Ending:
    """The one end path and the one end hook; collaborators in the constructor (ORCH-2420)."""

    def __init__(
        self,
        pools: dict[str, Pool],
        sessions: SessionTable,
        tracing: Tracing,
        metrics: Metrics,
    ) -> None:
        self.pools = pools
        self.sessions = sessions
        self.tracing = tracing
        self.metrics = metrics

    def end(self, rec: TaskRecord, terminal: EndEvent | ErrorEvent) -> bool:
        """End ``rec`` from outside its runner (ORCH-2411): cancel, drain, watchdog,
        shutdown and bounded waits all come here. The terminal event is appended
        first, so nothing can follow it (ORCH-1106, ORCH-2004); then the runner is
        cancelled, which closes the engine stream and frees the slot when the
        dispatcher releases it. False when the task had already ended."""
        if rec.terminal:
            return False
        self.pools[rec.pool_id].queue.remove(rec)  # a queued task never reaches the engine
        ended = rec.finish(terminal)
        if rec.runner is not None:
            rec.runner.cancel()
        return ended

    def cancel(self, rec: TaskRecord) -> None:
        """End the task now; the caller answers 204 only after this returned (ORCH-2004)."""
        if self.end(rec, canceled_event(rec, time.monotonic())):
            self.metrics.tasks_canceled.add(
                1, {"engine": rec.engine, "pool_id": rec.pool_id, "priority": rec.priority}
            )

    def on_task_ended(self, rec: TaskRecord) -> None:
        """The one "task ended" hook (ORCH-2412), called once per task with its terminal
        event: every end is logged (ORCH-7030) and traced. A task that ended while
        queued (canceled, displaced, expired, orphaned) gives its session back the
        tokens reserved at admission (ORCH-1405); a task that ran settles its session
        when the dispatcher releases its runner."""
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
