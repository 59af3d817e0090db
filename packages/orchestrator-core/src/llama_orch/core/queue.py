"""Bounded admission queue of one pool, with full-queue policies (ORCH-1101..1106).

Pure code: no I/O, no asyncio, the clock is passed in.

Semantics (normative text in ``.specs/10-orchestratord.md``):

* One FIFO per priority; arrival order is kept within a priority.
* ``capacity`` bounds the number of queued (not running) tasks of the pool.
* When a push finds the pool full, the policy decides:

  - ``reject``: the new task is refused (``ADMISSION_REJECT``).
  - ``drop-lru``: the oldest queued task whose priority is not higher than
    the new one is displaced (``QUEUE_FULL_DROP_LRU``); if every queued task
    outranks the new one, the new one is refused.
  - ``shed-low-priority``: the newest queued task of the lowest priority
    strictly below the new one is displaced (``ADMISSION_REJECT``); if there
    is none, the new one is refused.

* ``pop`` serves priorities by weighted round robin (defaults interactive 8,
  batch 1) so batch work is never starved outright.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from .config import FullPolicy
from .errors import AdmissionRejected, ErrorCode

__all__ = ["PRIORITIES", "AdmissionQueue", "Displaced", "DrainRate"]

PRIORITIES: tuple[str, ...] = ("interactive", "batch")  # highest first
DEFAULT_WEIGHTS: Mapping[str, int] = {"interactive": 8, "batch": 1}

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Displaced(Generic[T]):
    """A queued task pushed out by a full-queue policy, with its terminal code."""

    item: T
    code: ErrorCode


class AdmissionQueue(Generic[T]):
    def __init__(
        self,
        capacity: int,
        policy: FullPolicy = "reject",
        weights: Mapping[str, int] = DEFAULT_WEIGHTS,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.policy = policy
        self._weights = {p: max(1, int(weights.get(p, 1))) for p in PRIORITIES}
        self._fifos: dict[str, deque[T]] = {p: deque() for p in PRIORITIES}
        self._prio_of: dict[T, str] = {}
        self._seq: dict[T, int] = {}
        self._next_seq = 0
        self._credit = dict(self._weights)

    def __len__(self) -> int:
        return len(self._prio_of)

    def __contains__(self, item: object) -> bool:
        return item in self._prio_of

    def __iter__(self) -> Iterator[T]:
        """Queued items in the order ``pop`` would serve them if nothing changed."""
        fifos = {p: list(q) for p, q in self._fifos.items()}
        credit = dict(self._credit)
        while any(fifos.values()):
            p = self._choose(fifos, credit)
            credit[p] -= 1
            yield fifos[p].pop(0)

    def depth(self, priority: str) -> int:
        return len(self._fifos[priority])

    def push(self, item: T, priority: str) -> list[Displaced[T]]:
        """Enqueue ``item``; return what the policy displaced, or raise."""
        if priority not in self._fifos:
            raise ValueError(f"unknown priority {priority!r}")
        displaced: list[Displaced[T]] = []
        if len(self) >= self.capacity:
            victim = self._victim(priority)
            if victim is None:
                raise AdmissionRejected(
                    f"queue full ({self.capacity} queued)", policy_label=self.policy
                )
            self.remove(victim.item)
            displaced.append(victim)
        self._fifos[priority].append(item)
        self._prio_of[item] = priority
        self._seq[item] = self._next_seq
        self._next_seq += 1
        return displaced

    def _victim(self, priority: str) -> Displaced[T] | None:
        rank = PRIORITIES.index(priority)
        if self.policy == "drop-lru":
            # FIFOs are in arrival order, so the oldest eligible task is the
            # head with the smallest arrival sequence number.
            heads = [q[0] for p in PRIORITIES[rank:] if (q := self._fifos[p])]
            if not heads:
                return None
            oldest = min(heads, key=self._seq.__getitem__)
            return Displaced(oldest, ErrorCode.QUEUE_FULL_DROP_LRU)
        if self.policy == "shed-low-priority":
            for p in reversed(PRIORITIES[rank + 1 :]):
                if self._fifos[p]:
                    return Displaced(self._fifos[p][-1], ErrorCode.ADMISSION_REJECT)
            return None
        return None

    def remove(self, item: T) -> bool:
        prio = self._prio_of.pop(item, None)
        if prio is None:
            return False
        del self._seq[item]
        self._fifos[prio].remove(item)
        return True

    def pop(self) -> T | None:
        if not self._prio_of:
            return None
        p = self._choose(self._fifos, self._credit)
        self._credit[p] -= 1
        item = self._fifos[p].popleft()
        del self._prio_of[item]
        del self._seq[item]
        return item

    def _choose(self, fifos: Mapping[str, object], credit: dict[str, int]) -> str:
        ready = [p for p in PRIORITIES if fifos[p]]
        if all(credit[p] <= 0 for p in ready):
            for p in PRIORITIES:
                credit[p] = self._weights[p]
        for p in ready:
            if credit[p] > 0:
                return p
        return ready[0]

    def position(self, item: T) -> int:
        """0-based position in serving order, or -1 when not queued."""
        for n, it in enumerate(self):
            if it == item:
                return n
        return -1


class DrainRate:
    """How fast a pool finishes tasks, to compute backoff (ORCH-1105).

    Keeps an EWMA of task service time (dispatch → terminal) and the number
    of slots serving in parallel; before any task finished it uses a prior
    derived from the requested token budget.
    """

    def __init__(self, slots: int, *, alpha: float = 0.3, prior_ms_per_token: float = 25.0):
        self.slots = max(1, slots)
        self._alpha = alpha
        self._prior = prior_ms_per_token
        self.service_ms: float | None = None
        self.ms_per_token: float | None = None

    def observe(self, service_ms: float, tokens: int) -> None:
        a = self._alpha
        self.service_ms = (
            service_ms if self.service_ms is None else (a * service_ms + (1 - a) * self.service_ms)
        )
        if tokens > 0:
            per = service_ms / tokens
            self.ms_per_token = (
                per if self.ms_per_token is None else (a * per + (1 - a) * self.ms_per_token)
            )

    def task_ms(self, max_tokens: int) -> float:
        if self.service_ms is not None:
            return self.service_ms
        return max_tokens * (self.ms_per_token or self._prior)

    def predicted_start_ms(self, ahead: int, running: int, max_tokens: int) -> int:
        """Time until a task with ``ahead`` queued tasks before it gets a slot."""
        busy = max(0, running + ahead - self.slots + 1)
        return int(busy * self.task_ms(max_tokens) / self.slots)
