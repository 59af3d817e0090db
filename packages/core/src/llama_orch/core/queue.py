"""Bounded admission queue of one pool: WFQ, EDF and full policies (ORCH-1101..1106, ORCH-1110).

Pure code: no I/O, no asyncio, the clock is passed in.

Semantics (normative text in ``.specs/10-orchestratord.md``):

* One *band* per priority and, inside a band, one *flow* per tenant.
* ``pop`` serves bands by weighted round robin (defaults interactive 8,
  batch 1) and, inside a band, tenants by deficit round robin with their
  configured weights (ORCH-1110), so no band or tenant is starved: a flow
  with queued work is served at least once in every round of its band.
* Within a flow, tasks with a deadline are served first, earliest deadline
  first (EDF, ORCH-1111); tasks without one keep arrival order (FIFO). With
  start-by instants (``promise``, ORCH-2972) the two orders are merged instead:
  the EDF head goes first only when its start-by is not later than the FIFO head's.
* ``capacity`` bounds the number of queued (not running) tasks of the pool.
* When a push finds the pool full, the policy decides:

  - ``reject``: the new task is refused (``ADMISSION_REJECT``).
  - ``drop-lru``: the oldest queued task whose priority is not higher than
    the new one is displaced (``QUEUE_FULL_DROP_LRU``); if every queued task
    outranks the new one, the new one is refused.
  - ``shed-low-priority``: the newest queued task of the lowest priority
    strictly below the new one is displaced (``ADMISSION_REJECT``); if there
    is none, the new one is refused.

Cost: push, pop, peek and remove are amortised O(1) (O(log n) for tasks
with deadlines); removed entries are dropped lazily and compacted when they
outnumber live ones. Iteration simulates the serving order and costs O(n log n);
``position`` computes one task's place in it with one pass over flows and bands:
O(flows + bands) for the newest task of a flow (the common admission), else
O(tasks of its flow).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from .config import PRIORITIES, FullPolicy
from .errors import AdmissionRejected, ErrorCode
from .predict import DrainRate

__all__ = ["DEFAULT_TENANT", "PRIORITIES", "AdmissionQueue", "Displaced", "DrainRate"]

DEFAULT_WEIGHTS: Mapping[str, int] = {"interactive": 8, "batch": 1}
DEFAULT_TENANT = "default"

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Displaced(Generic[T]):
    """A queued task pushed out by a full-queue policy, with its terminal code."""

    item: T
    code: ErrorCode


class _Entry(Generic[T]):
    __slots__ = ("alive", "band", "by", "deadline", "flow", "item", "seq")

    def __init__(
        self, item: T, band: _Band[T], flow: _Flow[T], seq: int, deadline: float | None
    ) -> None:
        self.item = item
        self.band = band
        self.flow = flow
        self.seq = seq
        self.deadline = deadline
        # ORCH-2972: start-by; until promised, ORCH-1111's order (deadlines first)
        self.by = -math.inf if deadline is not None else math.inf
        self.alive = True


class _Flow(Generic[T]):
    """One tenant inside one band."""

    __slots__ = (
        "active", "credit", "edf", "edf_live", "fifo", "live", "promised", "tenant", "weight",
    )  # fmt: skip

    def __init__(self, tenant: str, weight: int) -> None:
        self.tenant = tenant
        self.weight = weight
        self.credit = weight
        self.fifo: deque[_Entry[T]] = deque()
        self.edf: list[tuple[float, int, _Entry[T]]] = []
        self.live = 0
        self.edf_live = 0  # live entries with a deadline (served before the FIFO ones)
        self.active = False
        self.promised = False  # ORCH-2972: some entry got a start-by; else ORCH-1111's order

    def head(self) -> _Entry[T]:
        edf, fifo = self.edf, self.fifo
        while edf and not edf[0][2].alive:
            heapq.heappop(edf)
        while fifo and not fifo[0].alive:
            fifo.popleft()
        if edf and (not fifo or self._edf_by() <= fifo[0].by):  # ORCH-1111, ORCH-2972
            return edf[0][2]
        return fifo[0]

    def _edf_by(self) -> float:
        """The earliest start-by of the live deadline entries (ORCH-2972); unpromised,
        -inf without a look."""
        if not self.promised:
            return -math.inf
        return min(e.by for _, _, e in self.edf if e.alive)

    def lazy(self) -> Iterator[_Entry[T]]:
        """This flow's live entries in serving order, on demand: the EDF order (from a
        copy of the heap) merged with the FIFO deque as it is, the EDF head first while
        the earliest start-by of the deadline entries left is not later than the FIFO
        head's (ORCH-2972; unpromised, all deadlines first)."""
        fifo = (e for e in self.fifo if e.alive)
        if self.edf_live:
            if not self.promised:
                heap = self.edf.copy()
                while heap:
                    entry = heapq.heappop(heap)[2]
                    if entry.alive:
                        yield entry
            else:
                edf = [e for _, _, e in sorted(self.edf, key=lambda x: x[:2]) if e.alive]
                least = [e.by for e in edf]  # the earliest start-by from each one on
                for i in range(len(least) - 2, -1, -1):
                    least[i] = min(least[i], least[i + 1])
                f = next(fifo, None)
                i = 0
                while i < len(edf):
                    if f is None or least[i] <= f.by:
                        yield edf[i]
                        i += 1
                    else:
                        yield f
                        f = next(fifo, None)
                if f is not None:
                    yield f
        yield from fifo

    def index(self, entry: _Entry[T]) -> int:
        """``entry``'s place in this flow's serving order (``lazy()``): O(1) for
        the newest FIFO entry, else O(tasks of this flow)."""
        if self.fifo and self.fifo[-1] is entry and entry.by == math.inf:
            return self.live - 1  # the newest, unpromised: after every other entry
        if self.promised:  # ORCH-2972: the merge decides; count it
            for n, e in enumerate(self.lazy()):
                if e is entry:
                    return n
            raise AssertionError("entry not in its flow")  # pragma: no cover
        if entry.deadline is not None:
            key = (entry.deadline, entry.seq)
            return sum(1 for d, s, e in self.edf if e.alive and (d, s) < key)
        n = self.edf_live
        for e in self.fifo:
            if e is entry:
                return n
            n += e.alive
        raise AssertionError("entry not in its flow")  # pragma: no cover


def _turns_before(k: int, target: int, units: list[tuple[int, int, int]]) -> int:
    """Items served before the ``k``-th (0-based) item of unit ``target`` when units take
    turns in list order, unit ``i`` serving up to ``first`` items in the first round and
    ``weight`` in every later one, and leaving the rotation when its ``live`` run out.

    ``units`` holds ``(live, first, weight)``. This is weighted round robin across bands
    and deficit round robin across a band's flows as ``pop`` runs them (ORCH-1101,
    ORCH-1110); one pass over the units instead of simulating every queued task.
    """
    _, first_t, weight_t = units[target]
    rnd = 0 if k < first_t else 1 + (k - first_t) // weight_t

    def served(i: int, rounds: int) -> int:
        live, first, weight = units[i]
        return 0 if rounds == 0 else min(live, first + (rounds - 1) * weight)

    before = k
    for i in range(len(units)):
        if i != target:
            before += served(i, rnd + 1 if i < target else rnd)
    return before


class _Band(Generic[T]):
    """One priority: its tenants' flows in round-robin order."""

    __slots__ = ("active", "arrivals", "credit", "flows", "live", "name", "rank", "weight")

    def __init__(self, name: str, rank: int, weight: int) -> None:
        self.name = name
        self.rank = rank
        self.weight = weight
        self.credit = weight
        self.flows: dict[str, _Flow[T]] = {}
        self.active: deque[_Flow[T]] = deque()
        self.arrivals: deque[_Entry[T]] = deque()  # arrival order, for the full policies
        self.live = 0

    def head_flow(self) -> _Flow[T]:
        active = self.active
        while active[0].live == 0:
            self._retire(active.popleft())
        return active[0]

    def _retire(self, flow: _Flow[T]) -> None:
        flow.active = False
        flow.credit = flow.weight
        if flow.live == 0:
            del self.flows[flow.tenant]


class _FlowCursor(Generic[T]):
    """A flow's state while ``AdmissionQueue.__iter__`` simulates serving order."""

    __slots__ = ("credit", "entries", "left", "weight")

    def __init__(self, flow: _Flow[T]) -> None:
        self.weight, self.credit, self.left = flow.weight, flow.credit, flow.live
        self.entries = flow.lazy()


class _BandCursor(Generic[T]):
    __slots__ = ("band", "credit", "flows")

    def __init__(self, band: _Band[T], flows: list[_FlowCursor[T]]) -> None:
        self.band, self.credit, self.flows = band, band.credit, deque(flows)


class AdmissionQueue(Generic[T]):
    def __init__(
        self,
        capacity: int,
        policy: FullPolicy = "reject",
        weights: Mapping[str, int] = DEFAULT_WEIGHTS,
        tenant_weights: Mapping[str, int] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.policy = policy
        self._bands: dict[str, _Band[T]] = {
            p: _Band(p, n, max(1, int(weights.get(p, 1)))) for n, p in enumerate(PRIORITIES)
        }
        self._order = list(self._bands.values())
        self._tenant_weights = dict(tenant_weights or {})
        self._entries: dict[T, _Entry[T]] = {}
        self._next_seq = 0
        self._front_seq = 0  # decreasing: tasks put back in front (ORCH-1908)
        self._dead = 0  # stale references left in deques by pop/remove
        # ORCH-2972: the pool's ``dispatch.keep_told_start`` margin, set by its owner
        self.keep_told_start: float | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: object) -> bool:
        return item in self._entries

    def __iter__(self) -> Iterator[T]:
        """Queued items in the order ``pop`` would serve them if nothing changed.

        Lazy: taking the first ``k`` items costs O(k + flows), not the whole queue
        (admission forecasts take at most ``PREDICT_HORIZON``). Do not push, pop or
        remove while iterating (a flow's deque raises if it changes under it).
        """
        bands = [_BandCursor(b, [_FlowCursor(f) for f in b.active if f.live]) for b in self._order]
        while True:
            ready = [x for x in bands if x.flows]
            if len(ready) == 1:  # ORCH-2954: uncontested (no band gains flows while
                band = ready[0]  # iterating): the band credits below choose nothing
            elif not ready:
                return
            else:
                if all(x.credit <= 0 for x in ready):
                    for x in bands:
                        x.credit = x.band.weight
                band = next((x for x in ready if x.credit > 0), ready[0])
                band.credit -= 1  # same rule as pop(): credit is spent only when contested
            flow = band.flows[0]
            yield next(flow.entries).item
            flow.credit -= 1
            flow.left -= 1
            if not flow.left:
                band.flows.popleft()
            elif flow.credit <= 0:
                flow.credit = flow.weight
                band.flows.rotate(-1)

    def queued(self) -> Iterator[T]:
        """Queued items in arrival order (not serving order); O(n), for forecasts."""
        return iter(self._entries)

    def depth(self, priority: str) -> int:
        return self._bands[priority].live

    def tenant_depth(self, tenant: str) -> int:
        """Queued tasks of ``tenant``, all priorities (O(priorities))."""
        return sum(f.live for b in self._order if (f := b.flows.get(tenant)) is not None)

    def tenant_weight(self, tenant: str) -> int:
        return max(1, int(self._tenant_weights.get(tenant, 1)))

    def push(
        self,
        item: T,
        priority: str,
        *,
        tenant: str = DEFAULT_TENANT,
        deadline: float | None = None,
        front: bool = False,
        held: int = 0,
        redeemed: bool = False,
    ) -> list[Displaced[T]]:
        """Enqueue ``item``; return what the policy displaced, or raise.

        ``front=True`` puts back a task that was already admitted (a preempted
        one, ORCH-1908): it goes ahead of its flow's queued tasks and is
        never refused or displaces anything, so ``capacity`` may be exceeded
        by the tasks put back this way; a later push into a queue at or over
        capacity displaces one task or is refused, so it never grows the excess.

        ``held``: places kept for refused clients whose return is due (ORCH-1981):
        they count as taken and are never displaced. ``redeemed=True``: such a
        client is back (ORCH-1980); like ``front`` it is never refused and may
        exceed ``capacity``, but it queues behind its flow like any arrival.
        """
        band = self._bands.get(priority)
        if band is None:
            raise ValueError(f"unknown priority {priority!r}")
        if item in self._entries:
            raise ValueError("item is already queued")
        displaced: list[Displaced[T]] = []
        if not (front or redeemed) and len(self._entries) + held >= self.capacity:
            victim = self._victim(band)
            if victim is None:
                raise AdmissionRejected(
                    f"queue full ({self.capacity} queued)", policy_label=self.policy
                )
            self.remove(victim.item)
            displaced.append(victim)
        flow = band.flows.get(tenant)
        if flow is None:
            flow = band.flows[tenant] = _Flow(tenant, self.tenant_weight(tenant))
        if not flow.active:
            flow.active = True
            band.active.append(flow)
        if front:
            seq = self._front_seq = self._front_seq - 1  # older than any arrival
        else:
            seq = self._next_seq
            self._next_seq = seq + 1
        entry = _Entry(item, band, flow, seq, deadline)
        if deadline is not None:
            heapq.heappush(flow.edf, (deadline, seq, entry))
            flow.edf_live += 1
        elif front:
            flow.fifo.appendleft(entry)
        else:
            flow.fifo.append(entry)
        if front:
            band.arrivals.appendleft(entry)
        else:
            band.arrivals.append(entry)
        band.live += 1
        flow.live += 1
        self._entries[item] = entry
        return displaced

    def promise(self, item: T, by: float) -> None:
        """Set a queued item's start-by instant (ORCH-2972); a task without a deadline
        gets at least the start-by of the nearest one queued ahead of it in its flow that
        has one (arrival order kept). O(1) for the newest task of a flow."""
        entry = self._entries[item]
        flow = entry.flow
        if entry.deadline is None:
            behind = True  # walking from the tail: first past ``entry`` itself
            for e in reversed(flow.fifo):
                if behind:
                    behind = e is not entry
                elif e.alive and e.by != math.inf:
                    by = max(by, e.by)
                    break
        entry.by = by
        flow.promised = True

    def _victim(self, band: _Band[T]) -> Displaced[T] | None:
        if self.policy == "drop-lru":
            oldest: _Entry[T] | None = None
            for b in self._order[band.rank :]:
                arr = b.arrivals
                while arr and not arr[0].alive:
                    arr.popleft()
                    self._dead -= 1
                if arr and (oldest is None or arr[0].seq < oldest.seq):
                    oldest = arr[0]
            if oldest is None:
                return None
            return Displaced(oldest.item, ErrorCode.QUEUE_FULL_DROP_LRU)
        if self.policy == "shed-low-priority":
            for b in reversed(self._order[band.rank + 1 :]):
                arr = b.arrivals
                while arr and not arr[-1].alive:
                    arr.pop()
                    self._dead -= 1
                if arr:
                    return Displaced(arr[-1].item, ErrorCode.ADMISSION_REJECT)
            return None
        return None

    def remove(self, item: T) -> bool:
        entry = self._entries.pop(item, None)
        if entry is None:
            return False
        self._unlink(entry)
        self._dead += 2  # its flow deque and its band's arrivals
        if self._dead > 2 * len(self._entries) + 1024:
            self._compact()
        return True

    def _unlink(self, entry: _Entry[T]) -> None:
        entry.alive = False
        entry.band.live -= 1
        entry.flow.live -= 1
        if entry.deadline is not None:
            entry.flow.edf_live -= 1

    def _choose(self) -> _Band[T]:
        ready = [b for b in self._order if b.live]
        for b in ready:
            if b.credit > 0:
                return b
        for b in self._order:
            b.credit = b.weight
        return ready[0]

    def peek(self) -> T | None:
        """The item ``pop`` would return now, without removing it."""
        if not self._entries:
            return None
        return self._choose().head_flow().head().item

    def peek_meta(self) -> tuple[str, str] | None:
        """``(priority, tenant)`` of the item ``pop`` would return now."""
        if not self._entries:
            return None
        band = self._choose()
        return band.name, band.head_flow().tenant

    def pop(self) -> T | None:
        if not self._entries:
            return None
        band = self._choose()
        if any(b.live for b in self._order if b is not band):
            # Credit is spent only while another band waits: serving a band
            # alone must not cost it its turn later (WRR starvation bound).
            band.credit -= 1
        flow = band.head_flow()
        entry = flow.head()
        if entry.deadline is None:
            flow.fifo.popleft()
        else:
            heapq.heappop(flow.edf)
        del self._entries[entry.item]
        self._unlink(entry)
        arr = band.arrivals
        self._dead += 1
        while arr and not arr[0].alive:
            arr.popleft()
            self._dead -= 1
        flow.credit -= 1
        if flow.live == 0:
            band._retire(band.active.popleft())
        elif flow.credit <= 0:
            flow.credit = flow.weight
            band.active.rotate(-1)
        if self._dead > 2 * len(self._entries) + 1024:
            self._compact()
        return entry.item

    def _compact(self) -> None:
        for band in self._order:
            band.arrivals = deque(e for e in band.arrivals if e.alive)
            for flow in list(band.flows.values()):
                flow.fifo = deque(e for e in flow.fifo if e.alive)
                flow.edf = [x for x in flow.edf if x[2].alive]
                heapq.heapify(flow.edf)
            for flow in band.active:
                if flow.live == 0:
                    flow.active = False
                    flow.credit = flow.weight
            band.active = deque(f for f in band.active if f.live)
            for tenant in [t for t, f in band.flows.items() if f.live == 0]:
                del band.flows[tenant]
        self._dead = 0

    def position(self, item: T) -> int:
        """0-based position in serving order, or -1 when not queued.

        Computed, not simulated: the task's place in its flow, then deficit round robin
        over its band's flows, then weighted round robin over the bands, each one pass
        over flows or bands (``_turns_before``). O(flows + bands) for the newest FIFO
        task of a flow, the common admission; else O(tasks of its flow).
        """
        entry = self._entries.get(item)
        if entry is None:
            return -1
        flow, band = entry.flow, entry.band
        k = flow.index(entry)
        flows = [f for f in band.active if f.live]
        k = _turns_before(k, flows.index(flow), [(f.live, f.credit, f.weight) for f in flows])
        bands = self._order
        return _turns_before(
            k,
            bands.index(band),
            [(b.live, max(b.credit, 0) if b.live else 0, b.weight) for b in bands],
        )
