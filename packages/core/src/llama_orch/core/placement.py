"""Placement over replica sets: pure functions of a snapshot (ORCH-1301..1304, ORCH-1116).

A replica set is every Ready replica with one :class:`ReplicaSetKey`; replicas
whose engine version (or digest, quant, ctx, sampler profile) differ never
share a set. A task is either *pinned* to a set (``determinism: strict``
tasks and later turns of a session, ORCH-1302) or free; a free task goes to
the set with the most free slots (then the least assigned work). Within the
set the replica with the most free slots wins, then the session's previous
replica (KV warmth, ORCH-1404), then the least assigned work (``load``: the
remaining tokens of the tasks running on it, ORCH-1907), then the lowest
``replica_id`` — deterministic for a state.

:func:`next_dispatch` is the one dispatch decision: look at the head of the
queue and say whether to start it (where), fail it (its pinned set has no
Ready replica left) or wait.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic

from .queue import AdmissionQueue
from .replica import ReplicaSetKey

if sys.version_info >= (3, 13):
    from typing import TypeVar
else:
    from typing_extensions import TypeVar

__all__ = ["Chooser", "Dispatch", "Orphaned", "ReplicaView", "choose_set", "next_dispatch", "place"]

T = TypeVar("T", bound=Hashable)
# The replica-set key: orchestratord's ReplicaSetKey, or a store's opaque string
# (the memory state store); placement only hashes, compares and orders keys.
K = TypeVar("K", bound=Hashable, default=ReplicaSetKey)


@dataclass(frozen=True, slots=True)
class ReplicaView(Generic[K]):
    replica_id: str
    set_key: K
    ready: bool
    slots: int
    busy: int
    load: int = 0  # remaining tokens of the tasks running on it (ORCH-1907)

    @property
    def free(self) -> int:
        return max(0, self.slots - self.busy) if self.ready else 0


@dataclass(frozen=True, slots=True)
class Dispatch(Generic[T, K]):
    item: T
    replica_id: str
    set_key: K


@dataclass(frozen=True, slots=True)
class Orphaned(Generic[T]):
    """The head task is pinned to a set that has no Ready replica any more."""

    item: T


def _set_free(replicas: Iterable[ReplicaView[K]]) -> dict[K, tuple[int, int]]:
    """Free slots and negated assigned work of each Ready set."""
    free: dict[K, tuple[int, int]] = {}
    for r in replicas:
        if r.ready:
            slots, neg_load = free.get(r.set_key, (0, 0))
            free[r.set_key] = (slots + r.free, neg_load - r.load)
    return free


def choose_set(replicas: Iterable[ReplicaView[K]], prefer: K | None = None) -> K | None:
    """The Ready set with the most free slots (``prefer`` on ties, then the least
    assigned work, then the lowest key)."""
    free = _set_free(replicas)
    if len(free) <= 1:
        return next(iter(free), None)
    # The lowest key breaks the remaining ties (``_neg``); it is computed only for the
    # sets still tied, since a key's repr holds a model digest (ORCH-2780: it took 2.4 %
    # of orchestratord's CPU per request when computed for every set at every dispatch).
    # Same choice as max() over (free, prefer, load, _neg(key)) in ``free``'s order.
    top = max((slots, k == prefer, neg_load) for k, (slots, neg_load) in free.items())
    tied = [k for k, (slots, neg_load) in free.items() if (slots, k == prefer, neg_load) == top]
    return tied[0] if len(tied) == 1 else max(tied, key=_neg)


def _neg(key: Hashable) -> tuple[int, ...]:
    # max() with "lowest key wins" on ties: negate the ordinal of each character.
    return tuple(-ord(c) for c in repr(key))


# Picks among the Ready replicas of the chosen set (a pool's placement policy,
# ORCH-2310); returns None when none of them has a free slot.
Chooser = Callable[[list[ReplicaView[K]]], "ReplicaView[K] | None"]


def place(
    replicas: Iterable[ReplicaView[K]],
    pin: K | None = None,
    affinity: str | None = None,
    choose: Chooser[K] | None = None,
) -> ReplicaView[K] | None:
    """The replica to start a task on now, or None (stay queued, ORCH-1304)."""
    views = [r for r in replicas if r.ready and (pin is None or r.set_key == pin)]
    if not views:
        return None
    if pin is None:
        warm = next((r.set_key for r in views if r.replica_id == affinity), None)
        key = choose_set(views, prefer=warm)
        views = [r for r in views if r.set_key == key]
    if choose is not None:
        return choose(views) if any(r.free > 0 for r in views) else None
    best: ReplicaView[K] | None = None
    best_rank: tuple[int, bool, int] = (0, False, 0)
    for r in sorted(views, key=lambda v: v.replica_id):  # ties keep the lowest id
        rank = (r.free, r.replica_id == affinity, -r.load)
        if rank[0] > 0 and (best is None or rank > best_rank):
            best, best_rank = r, rank
    return best


def next_dispatch(
    queue: AdmissionQueue[T],
    replicas: Iterable[ReplicaView[K]],
    pin_of: Callable[[T], K | None],
    affinity_of: Callable[[T], str | None],
    chooser_of: Callable[[T], Chooser[K] | None] | None = None,
) -> Dispatch[T, K] | Orphaned[T] | None:
    """Pop and place the head task, pop it as orphaned, or return None to wait.

    The head blocks the queue while its pinned set is full: serving order is
    the WFQ order, never reshuffled by placement (ORCH-1116).
    """
    head = queue.peek()
    if head is None:
        return None
    views = list(replicas)
    pin = pin_of(head)
    if pin is not None and not any(r.ready and r.set_key == pin for r in views):
        queue.pop()
        return Orphaned(head)
    chooser = chooser_of(head) if chooser_of is not None else None
    replica = place(views, pin, affinity_of(head), chooser)
    if replica is None:
        return None
    popped = queue.pop()
    assert popped is head
    return Dispatch(head, replica.replica_id, replica.set_key)
