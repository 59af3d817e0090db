"""Migration of running tasks whose replica dies or resets (ORCH-2330..2336).

When a task's engine stream fails with ``WORKER_RESET`` after the engine had
answered, the task continues on another Ready replica of its replica set (same
engine, model digest, context and engine version) instead of failing: it goes
back to the front of its flow, pinned to that set, and its next run is a
continuation (prompt + the text streamed so far, same seed, the remaining
``max_tokens``), the same resumption hard preemption uses (ORCH-1903). Token
indices continue where they stopped; one ``metrics`` event ``{migrated: true}``
marks each move; the task still ends with exactly one terminal event.

A task moves at most ``pools[].migration_limit`` times (default 1, 0: never).
With no other Ready replica in its set, or past the limit, it ends with
``WORKER_RESET`` as before. Each outcome is counted in ``migrations_total``.

The text streamed so far is read back from the task's own event log (its
``token`` events) when the move happens, so no per-token copy is kept while
tasks run (ORCH-8016).
"""

from __future__ import annotations

import logging
import time

import msgspec
from llama_orch.core.api import MetricsEvent
from llama_orch.core.errors import AdmissionRejected, OrchError, WorkerReset
from llama_orch.core.sse import SSEParser

from .metrics import Metrics
from .pools import Pool, Replica
from .tasks import TaskRecord

__all__ = ["Migrator", "streamed_text"]

_log = logging.getLogger("llama_orch.orchestratord")


class _Token(msgspec.Struct):
    t: str
    i: int


_token_decoder = msgspec.json.Decoder(_Token)


def streamed_text(rec: TaskRecord) -> list[str]:
    """The text of every ``token`` event in the task's log, in order."""
    parser = SSEParser()
    out: list[str] = []
    for frame in rec.frames_so_far():
        for msg in parser.feed(frame):
            if msg.event == "token":
                out.append(_token_decoder.decode(msg.data).t)
    return out


class Migrator:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def _count(self, pool: Pool, result: str) -> None:
        self._metrics.migrations.add(
            1, {"engine": pool.engine, "pool_id": pool.id, "result": result}
        )

    def migrate(self, pool: Pool, replica: Replica, rec: TaskRecord, exc: OrchError) -> bool:
        """Move a task whose replica failed mid-stream (ORCH-2330); False: let it fail."""
        if not isinstance(exc, WorkerReset) or rec.terminal or rec.preempt_requested:
            return False
        if pool.config.migration_limit == 0:
            return False  # migration is off: WORKER_RESET as before (ORCH-2334)
        if rec.migrations >= pool.config.migration_limit:
            self._count(pool, "limit")
            return False
        dead = replica.state.replica_id
        targets = [
            r
            for r in pool.replicas.values()
            if r is not replica and r.state.ready and r.state.set_key() == rec.set_key
        ]
        if not targets:  # ORCH-2333: nowhere to go
            self._count(pool, "no_target")
            return False
        assert rec.dispatched is not None
        # The dead replica leaves placement until it answers again (ORCH-1117).
        pool.suspect(dead, exc.message)
        rec.text_out = streamed_text(rec)
        rec.engine_ms_before += int((time.monotonic() - rec.dispatched) * 1000)
        try:
            pool.queue.push(rec, rec.priority, tenant=rec.tenant, deadline=rec.deadline, front=True)
        except AdmissionRejected:
            self._count(pool, "no_target")
            return False
        rec.migrations += 1
        rec.requeue()  # running -> queued through the task's lifecycle (ORCH-2401)
        rec.append(MetricsEvent(migrated=True, queue_depth=len(pool.queue)))  # ORCH-2331
        self._count(pool, "migrated")
        _log.warning(
            "task %s migrates after %d tokens: replica %s failed (%s)",
            rec.task_id,
            rec.tokens_out,
            dead,
            exc.message,
        )
        return True
