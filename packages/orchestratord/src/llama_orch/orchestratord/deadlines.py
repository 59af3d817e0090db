"""Deadlines met per pool and priority (ORCH-1112, ORCH-7006).

A task with a deadline counts once: when it ends after running (met if it
completed in time) or when it expires in the queue (missed). The ratio is the
``deadlines_met_ratio`` gauge.
"""

from __future__ import annotations

from collections.abc import Iterable

from llama_orch.core.queue import PRIORITIES

from .pools import Pool

__all__ = ["DeadlineStats"]


class DeadlineStats:
    def __init__(self, pools: Iterable[Pool]) -> None:
        self._engines = {pool.id: pool.engine for pool in pools}
        # (pool_id, priority) -> [met, total]
        self._counts: dict[tuple[str, str], list[int]] = {
            (pool_id, p): [0, 0] for pool_id in self._engines for p in PRIORITIES
        }

    def missed(self, pool_id: str, priority: str) -> None:
        """A task that can no longer meet its deadline (expired while queued)."""
        self._counts[pool_id, priority][1] += 1

    def observe(self, pool_id: str, priority: str, *, met: bool) -> None:
        """A task with a deadline ended after running."""
        stats = self._counts[pool_id, priority]
        stats[1] += 1
        stats[0] += met

    def samples(self) -> list[tuple[float, dict[str, str]]]:
        """The met ratio per (pool, priority) that saw a deadline task."""
        return [
            (met / total, {"engine": self._engines[pid], "pool_id": pid, "priority": p})
            for (pid, p), (met, total) in self._counts.items()
            if total
        ]
