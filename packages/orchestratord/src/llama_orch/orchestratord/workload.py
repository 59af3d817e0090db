"""What each replica is doing and how fast: the work-aware half of scheduling.

The orchestrator records which tasks run on each (pool, replica) and each
replica's own measured decode rate. From these come the replica loads that
placement prefers (ORCH-1907), the deadline forecast at admission
(ORCH-1006, ORCH-1905) and the per-token time of a replica (on-time odds).
"""

from __future__ import annotations

import dataclasses

from llama_orch.core.errors import DeadlineUnmet
from llama_orch.core.placement import ReplicaView
from llama_orch.core.predict import DrainRate, ReplicaForecast, forecast_ms
from llama_orch.core.queue import PRIORITIES

from .pools import Pool
from .tasks import TaskRecord

__all__ = ["Workload", "tokens_left"]


def tokens_left(rec: TaskRecord) -> int:
    """Tokens a task is still expected to generate (ORCH-1905, ORCH-1907)."""
    budget = rec.request.max_tokens
    if rec.expected_tokens is not None:
        budget = min(budget, rec.expected_tokens)
    return max(0, budget - rec.engine_tokens)


class Workload:
    def __init__(self) -> None:
        # Tasks running on each (pool, replica) and each replica's own rate (ORCH-1905).
        self.running: dict[tuple[str, str], set[TaskRecord]] = {}
        self._rates: dict[tuple[str, str], DrainRate] = {}

    def started(self, pool_id: str, replica_id: str, rec: TaskRecord) -> None:
        self.running.setdefault((pool_id, replica_id), set()).add(rec)

    def ended(self, pool_id: str, replica_id: str, rec: TaskRecord) -> None:
        running = self.running.get((pool_id, replica_id))
        if running is not None:
            running.discard(rec)

    def observe(self, pool_id: str, replica_id: str, slots: int, ms: int, tokens: int) -> None:
        """One uninterrupted run of ``tokens`` tokens in ``ms`` on that replica."""
        key = (pool_id, replica_id)
        rate = self._rates.get(key)
        if rate is None:
            rate = self._rates[key] = DrainRate(slots)
        rate.observe(ms, tokens)

    def ms_per_token(self, pool: Pool, replica_id: str) -> float:
        """The replica's own measured rate, else its pool's (ORCH-1905)."""
        own = self._rates.get((pool.id, replica_id))
        return own.ms_per_token if own and own.ms_per_token else pool.drain.decode_ms(1)

    def views(self, pool: Pool) -> list[ReplicaView]:
        """Replica views with each replica's assigned work (ORCH-1907)."""
        views = pool.views()
        for n, v in enumerate(views):
            tasks = self.running.get((pool.id, v.replica_id))
            if tasks:
                views[n] = dataclasses.replace(v, load=sum(tokens_left(t) for t in tasks))
        return views

    def check_deadline(
        self, pool: Pool, deadline_ms: int | None, tokens: int, priority: str
    ) -> None:
        """ORCH-1006, ORCH-1905: refuse when the predicted finish is past the deadline,
        forecast from each replica's own rate, the work running on it and the work
        queued ahead. Until the pool measured a task there is no rate to predict
        from, and the task is admitted."""
        if deadline_ms is None or not pool.drain.measured:
            return
        replicas = [
            ReplicaForecast(
                self.ms_per_token(pool, rid),
                r.state.slots,
                [tokens_left(t) for t in self.running.get((pool.id, rid), ())],
            )
            for rid, r in pool.replicas.items()
            if r.state.ready
        ]
        rank = PRIORITIES.index(priority)
        ahead = (
            tokens_left(t) for t in pool.queue.queued() if PRIORITIES.index(t.priority) <= rank
        )
        forecast = forecast_ms(replicas, ahead, tokens)
        if forecast is None:
            return
        start, finish = forecast
        if finish > deadline_ms:
            raise DeadlineUnmet(
                f"predicted finish in {finish:.0f} ms (start in {start:.0f} ms) exceeds"
                f" deadline_ms={deadline_ms} - at `$.deadline_ms`",
                pool_id=pool.id,
                engine=pool.engine,
            )
