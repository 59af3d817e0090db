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

from llama_orch.core.adapter_api import Finished, TokenChunk
from llama_orch.core.api import (
    EndEvent,
    ErrorEvent,
    MetricsEvent,
    StartedEvent,
    TaskAccepted,
    TokenEvent,
)
from llama_orch.core.config import Config
from llama_orch.core.errors import (
    AdmissionRejected,
    ErrorCode,
    InvalidParams,
    NotFound,
    OrchError,
    PoolUnavailable,
)
from llama_orch.core.queue import PRIORITIES
from llama_orch.core.replica import ReplicaState

from .admission import decode_request, prepare, resolve_pool
from .metrics import Metrics
from .pools import Pool, Replica
from .sessions import SessionTable
from .tasks import TaskRecord, TaskStore

__all__ = ["Orchestrator"]

_log = logging.getLogger("llama_orch.orchestratord")


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class Orchestrator:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pools: dict[str, Pool] = {p.id: Pool(p, config.admission) for p in config.pools}
        self.tasks = TaskStore(
            retention_s=config.admission.event_log_retention_s,
            max_tasks=config.admission.max_retained_tasks,
        )
        self.sessions = SessionTable(config.sessions)
        self.metrics = Metrics(queue_depths=self._queue_depths)
        self.accepting = True
        self._stopped = False
        self._loops: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for pool in self.pools.values():
            self._loops.append(
                asyncio.create_task(self._dispatch_loop(pool), name=f"dispatch-{pool.id}")
            )

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
        deadline = time.monotonic() + grace_s
        while any(t.state == "running" for t in self.tasks.active()):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for rec in self.tasks.active():
            pool = self.pools[rec.pool_id]
            pool.queue.remove(rec)
            rec.finish(
                ErrorEvent(
                    code=ErrorCode.POOL_UNAVAILABLE,
                    message="orchestratord is shutting down",
                    engine=rec.engine,
                    pool_id=rec.pool_id,
                    retriable=True,
                )
            )
            if rec.runner is not None:
                rec.runner.cancel()
        runners = [t.runner for t in self.tasks.active() if t.runner]
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, *runners, return_exceptions=True)
        for pool in self.pools.values():
            for replica in pool.replicas.values():
                await replica.adapter.aclose()
        self.metrics.shutdown()

    # ------------------------------------------------------------------ admission

    async def submit(self, body: bytes) -> TaskAccepted:
        """Admit one task or raise the OrchError that explains why not."""
        pool: Pool | None = None
        try:
            if not self.accepting:
                raise PoolUnavailable("orchestratord is shutting down", retry_after_ms=1000)
            req = decode_request(body)
            pool = resolve_pool(req, self.pools)
            if pool.draining:
                raise PoolUnavailable(f"pool {pool.id} is draining", pool_id=pool.id)
            prepared = await prepare(req, pool, self.config.admission)
            if self.tasks.get(prepared.task_id) is not None:
                raise InvalidParams(f"task_id {prepared.task_id} already exists - at `$.task_id`")
            sid = str(req.session_id) if req.session_id else None
            if sid is not None:
                self.sessions.begin_turn(sid)
            rec = TaskRecord(
                task_id=prepared.task_id,
                pool_id=pool.id,
                engine=pool.engine,
                priority=req.priority,
                request=prepared.request,
                prompt_tokens=prepared.prompt_tokens,
                session_id=sid,
            )
            try:
                displaced = pool.queue.push(rec, req.priority)
            except AdmissionRejected as exc:
                exc.retry_after_ms = self._retry_after_ms(pool, prepared.request.max_tokens)
                exc.pool_id, exc.engine = pool.id, pool.engine
                self._backpressure(pool)
                raise
            for victim in displaced:
                self._backpressure(pool)
                victim.item.finish(
                    ErrorEvent(
                        code=victim.code,
                        message=f"displaced by the {pool.queue.policy} policy",
                        engine=pool.engine,
                        pool_id=pool.id,
                        retriable=True,
                    )
                )
            self.tasks.add(rec)
        except OrchError as exc:
            self.metrics.tasks_rejected.add(
                1,
                {
                    "reason": exc.code.value,
                    "pool_id": pool.id if pool else "",
                    "engine": pool.engine if pool else "",
                },
            )
            raise
        self.metrics.tasks_enqueued.add(
            1, {"engine": pool.engine, "pool_id": pool.id, "priority": rec.priority}
        )
        rec.queue_position = pool.queue.position(rec)
        rec.predicted_start_ms = pool.drain.predicted_start_ms(
            rec.queue_position, pool.running(), rec.request.max_tokens
        )
        pool.wakeup.set()
        return TaskAccepted(
            rec.task_id, rec.queue_position, rec.predicted_start_ms, rec.predicted_start_ms
        )

    def _retry_after_ms(self, pool: Pool, max_tokens: int) -> int:
        # Time until the next slot frees, from the measured drain rate (ORCH-1105).
        return max(
            100, pool.drain.predicted_start_ms(0, max(pool.running(), pool.drain.slots), max_tokens)
        )

    def _backpressure(self, pool: Pool) -> None:
        self.metrics.backpressure.add(
            1, {"engine": pool.engine, "pool_id": pool.id, "policy": pool.queue.policy}
        )

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
        if rec.terminal:
            return
        pool = self.pools[rec.pool_id]
        pool.queue.remove(rec)  # a queued task never reaches the engine
        now = time.monotonic()
        rec.finish(
            EndEvent(
                tokens_out=rec.tokens_out,
                decode_ms=_ms(now - rec.first_token) if rec.first_token else 0,
                reason="canceled",
                tokens_in=rec.prompt_tokens,
                queue_wait_ms=_ms((rec.dispatched or now) - rec.created),
            )
        )
        self.metrics.tasks_canceled.add(
            1, {"engine": rec.engine, "pool_id": rec.pool_id, "priority": rec.priority}
        )
        if rec.runner is not None:
            rec.runner.cancel()  # closes the engine stream: upstream generation aborts

    # ------------------------------------------------------------------ dispatch

    async def _dispatch_loop(self, pool: Pool) -> None:
        while True:
            await pool.wakeup.wait()
            pool.wakeup.clear()
            while len(pool.queue) and pool.place() is not None:
                rec = pool.queue.pop()
                assert rec is not None
                affinity = None
                if rec.session_id and (s := self.sessions.get(rec.session_id)):
                    affinity = s.replica_id
                replica = pool.place(affinity)
                assert replica is not None
                replica.busy += 1
                rec.state, rec.replica_id = "running", replica.state.replica_id
                rec.engine_version = replica.state.engine_version
                rec.dispatched = time.monotonic()
                rec.runner = asyncio.create_task(
                    self._run(pool, replica, rec), name=f"task-{rec.task_id}"
                )
                rec.runner.add_done_callback(
                    lambda _t, p=pool, r=replica, t=rec: self._release(p, r, t)
                )

    def _release(self, pool: Pool, replica: Replica, rec: TaskRecord) -> None:
        # A done-callback runs even when the runner was cancelled before it started.
        replica.busy -= 1
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
        if rec.dispatched is not None and rec.state == "completed":
            pool.drain.observe(_ms(time.monotonic() - rec.dispatched), rec.tokens_out)
        if rec.session_id:
            self.sessions.record(
                rec.session_id, replica.state.replica_id, rec.prompt_tokens, rec.tokens_out
            )
        pool.wakeup.set()

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
        queue_wait_ms = _ms(rec.dispatched - rec.created)
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
        session = self.sessions.get(rec.session_id) if rec.session_id else None
        rec.append(
            MetricsEvent(
                queue_depth=len(pool.queue),
                kv_warmth=bool(session and session.replica_id == st.replica_id),
            )
        )
        self.metrics.tasks_started.add(1, attrs)
        self.metrics.tokens_in.add(
            rec.prompt_tokens, {k: attrs[k] for k in attrs if k != "priority"}
        )
        finished: Finished | None = None
        try:
            stream = replica.adapter.generate(rec.request)
            try:
                async for ev in stream:
                    if isinstance(ev, TokenChunk):
                        if rec.first_token is None:
                            rec.first_token = time.monotonic()
                            self.metrics.first_token_ms.record(
                                _ms(rec.first_token - rec.dispatched), attrs
                            )
                        if not rec.append(TokenEvent(ev.text, rec.tokens_out)):
                            break  # canceled meanwhile: stop reading, close upstream
                        rec.tokens_out += 1
                    else:
                        finished = ev
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            if finished is None:
                raise OrchError("engine stream ended without a final event", engine=rec.engine)
            end = time.monotonic()
            decode_ms = _ms(end - rec.first_token) if rec.first_token else 0
            if rec.finish(
                EndEvent(
                    tokens_out=rec.tokens_out,
                    decode_ms=decode_ms,
                    reason=finished.reason,  # type: ignore[arg-type]
                    tokens_in=rec.prompt_tokens,
                    queue_wait_ms=queue_wait_ms,
                    first_token_ms=_ms(rec.first_token - rec.dispatched)
                    if rec.first_token
                    else None,
                )
            ):
                self.metrics.decode_ms.record(decode_ms, attrs)
        except asyncio.CancelledError:
            pass  # cancel() or shutdown already appended the terminal event
        except OrchError as exc:
            rec.finish(
                ErrorEvent(
                    code=exc.code,
                    message=exc.message,
                    engine=rec.engine,
                    pool_id=pool.id,
                    retriable=exc.retriable,
                )
            )
        except Exception as exc:
            _log.exception("task %s failed", rec.task_id)
            rec.finish(
                ErrorEvent(
                    code=ErrorCode.INTERNAL,
                    message=f"internal error: {exc!r}",
                    engine=rec.engine,
                    pool_id=pool.id,
                    retriable=False,
                )
            )
        _log.info(
            "task finished",
            extra={
                "job_id": rec.task_id,
                "session_id": rec.session_id,
                "engine": rec.engine,
                "pool_id": pool.id,
                "replica_id": st.replica_id,
                "state": rec.state,
                "queue_time_ms": queue_wait_ms,
                "tokens_in": rec.prompt_tokens,
                "tokens_out": rec.tokens_out,
            },
        )
