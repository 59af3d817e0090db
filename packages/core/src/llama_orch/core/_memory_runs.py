"""The ``memory`` store's index of running tasks for ``preempt`` (ORCH-2617).

The same index as the valkey backend's ``run:<pool>:<prio>:<replica>:<owner>`` keys
(ORCH-2606): per pool, priority and replica, the owners with runs there, and per owner
its runs as ``(epoch, task_id)`` sorted by epoch. Fencing epochs are unique (one
counter per store), so a run is found again by its epoch with a bisection.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator, Sequence

from ._memory_task import TaskRecord

__all__ = ["RunEntry", "RunIndex", "run_entry"]

# (pool, priority, replica, owner, epoch): where a running task is indexed
RunEntry = tuple[str, str, str, str, int]


def run_entry(rec: TaskRecord) -> RunEntry:
    """Where the running task ``rec`` is indexed, from its record as it is now."""
    assert rec.replica is not None and rec.owner is not None
    return (rec.spec.pool, rec.spec.priority, rec.replica, rec.owner, rec.epoch)


class RunIndex:
    def __init__(self) -> None:
        # (pool, priority, replica) -> owner -> [(epoch, task_id)] by epoch
        self._keys: dict[tuple[str, str, str], dict[str, list[tuple[int, str]]]] = {}

    def add(self, task_id: str, entry: RunEntry) -> None:
        pool, prio, replica, owner, epoch = entry
        owners = self._keys.setdefault((pool, prio, replica), {})
        insort(owners.setdefault(owner, []), (epoch, task_id))

    def remove(self, task_id: str, entry: RunEntry) -> None:
        pool, prio, replica, owner, epoch = entry
        owners = self._keys[(pool, prio, replica)]
        runs = owners[owner]
        i = bisect_left(runs, (epoch, task_id))
        if i == len(runs) or runs[i] != (epoch, task_id):
            raise KeyError(f"run {task_id!r} is not indexed at {entry}")
        del runs[i]
        if not runs:
            del owners[owner]
            if not owners:
                del self._keys[(pool, prio, replica)]

    def victim(
        self,
        pool: str,
        prios: Iterable[str],
        replicas: Sequence[str],
        instance: str,
        live: set[str],
        eligible: Callable[[str], bool],
    ) -> tuple[str, str] | None:
        """ORCH-2597's choice among the runs of ``pool``, ``prios`` and ``replicas``
        owned by ``instance`` or a ``live`` owner that are ``eligible`` (on the head's
        pinned set): the caller's own run with the highest epoch, else the highest of
        any other; ``(task_id, owner)``. Each key is walked from its newest run down to
        the first eligible one, and no further than the best found so far."""
        best: tuple[bool, int, str, str] | None = None  # (own, epoch, task_id, owner)
        for prio in prios:
            for replica in dict.fromkeys(replicas):
                for owner, runs in self._keys.get((pool, prio, replica), {}).items():
                    own = owner == instance
                    if not own and owner not in live:
                        continue
                    for epoch, task_id in reversed(runs):
                        if best is not None and (own, epoch) < best[:2]:
                            break  # older than the best so far, and so is the rest
                        if eligible(task_id):
                            best = (own, epoch, task_id, owner)
                            break
        return None if best is None else (best[2], best[3])

    def entries(self) -> Iterator[tuple[str, RunEntry]]:
        """Every indexed run as ``(task_id, entry)`` (what tests and benches read)."""
        for (pool, prio, replica), owners in self._keys.items():
            for owner, runs in owners.items():
                for epoch, task_id in runs:
                    yield task_id, (pool, prio, replica, owner, epoch)
