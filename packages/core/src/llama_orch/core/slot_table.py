"""Which engine slot holds which prefix, and prefix-aware placement on engines with
per-slot caches (the slot rules: ORCH-2350..2357, ORCH-2364..2366, ORCH-2369..2373).

llama-server keeps one prompt per slot and reuses a slot's KV cache only for a
request that lands in that same slot; a busy slot shares nothing with the
engine's other slots. A replica-level prefix index
(:mod:`llama_orch.core.prefix_index`) therefore counts hits that a busy slot
cannot deliver. :class:`SlotTable` keeps, per replica and slot, the chained
block hashes (:func:`~llama_orch.core.prefix_index.block_hashes`) of the text
the slot is expected to hold and the tasks pinned to it, learned from our own
dispatches and corrected by the slot the engine reports (ORCH-2350, 2351).

:func:`choose_slot` picks a replica *and* a slot (ORCH-2352..2355): the idle
slot with the longest hit; a busy slot whose hit is much longer when its task
is about to finish (the engine starts a task pinned to a busy slot when the
slot frees); with no hit, the least-loaded replica's emptiest or stalest idle
slot, so that slots holding other prefixes keep them (not pinned: the engine's
own choice, which mirrors that rule, may restore the prompt from its host
cache). A slot belongs to the session that ran there last: while an idle slot
is empty, another session's history is not overwritten (the cold prefill would
only move to that session's next turn, with its history on top); among equal
hits the slot released longest ago goes; the host cache counts only for what no
slot holds (ORCH-2364..2366). An empty slot gets the longest prefix copied from
another slot, a busy one too when no idle slot holds as much (the engine saves a
busy slot once its task ends: a wait instead of a cold prefill); among equal
scores the replica with the least prefill still in flight goes (ORCH-2369..2373).
Pure: stdlib only, no clock (recency is a counter).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .placement import ReplicaView
    from .placement_policy import PlacementConfig

__all__ = [
    "DECODE_STEP_TOKENS",
    "SlotChoice",
    "SlotDecision",
    "SlotState",
    "SlotTable",
    "choose_slot",
    "shared_blocks",
]

SlotDecision = Literal["slot", "prefix", "wait", "load", "guard"]

# ORCH-2372, ORCH-2373: one decode step of a slot costs about as much engine time as
# this many prompt tokens (measured on build 11434, SmolLM2-135M, one thread: 25.6 ms
# per generated token, 6.7 ms per prompt token): a busy source's wait in prefill terms.
DECODE_STEP_TOKENS = 4


def shared_blocks(held: Sequence[bytes], hashes: Sequence[bytes]) -> int:
    """Leading blocks two chained-hash lists share (equal hash at i ⇒ equal 0..i)."""
    n = 0
    for a, b in zip(held, hashes, strict=False):
        if a != b:
            break
        n += 1
    return n


@dataclass(slots=True)
class SlotState:
    """One engine slot: the blocks of the text it holds, the tasks pinned to it
    (the first runs, the others wait in the engine), when it was last released."""

    held: list[bytes] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    released: int = 0  # SlotTable's counter at the last release; 0 = never used
    owner: str | None = None  # the session of the task that ran there last (ORCH-2364)

    @property
    def busy(self) -> bool:
        return bool(self.tasks)


@dataclass(frozen=True, slots=True)
class SlotChoice:
    """Where the slot rules place a task. ``pin``: send the slot to the engine, when
    an idle slot there holds the longest hit. Otherwise (no hit, ORCH-2354, or a
    longer one in the engine's host prompt cache) the engine's own choice applies,
    which can restore the prompt from that cache (llama-server does so only for a
    request it places itself); ``slot`` is then the slot the engine is expected to
    take, corrected by its report (ORCH-2351)."""

    replica_id: str
    slot: int
    decision: SlotDecision
    hit_blocks: int
    pin: bool
    fill: bool = False  # pinned to an empty slot to keep another session's (ORCH-2364)
    source: int | None = None  # with ``fill``: the slot to copy first (ORCH-2369)
    source_busy: bool = False  # that slot runs a task: the copy waits for it (ORCH-2372)


class SlotTable:
    """Per replica, per engine slot: held blocks and pinned tasks (ORCH-2350)."""

    def __init__(self) -> None:
        self._slots: dict[str, list[SlotState]] = {}
        self._epoch: dict[str, object] = {}
        self._where: dict[str, tuple[str, int]] = {}  # task -> (replica, slot)
        self._remaining: dict[str, int] = {}  # task -> tokens it may still generate
        self._owner: dict[str, str | None] = {}  # task -> its session (ORCH-2364)
        # task -> prompt blocks beyond its expected hit, until its first token (ORCH-2373)
        self._prefill: dict[str, int] = {}
        self._clock = 0

    def slots(self, replica_id: str, n_slots: int) -> list[SlotState]:
        """The replica's slots, grown to ``n_slots`` (an engine may report more later)."""
        table = self._slots.setdefault(replica_id, [])
        while len(table) < n_slots:
            table.append(SlotState())
        return table

    def observe_epoch(self, replica_id: str, epoch: object) -> None:
        """A restarted engine holds nothing (ORCH-2350, as ORCH-2304)."""
        if self._epoch.get(replica_id, epoch) != epoch:
            for task, (rid, _) in list(self._where.items()):
                if rid == replica_id:
                    del self._where[task]
                    self._remaining.pop(task, None)
                    self._owner.pop(task, None)
                    self._prefill.pop(task, None)
            self._slots.pop(replica_id, None)
        self._epoch[replica_id] = epoch

    def pin(
        self,
        replica_id: str,
        slot: int,
        task_id: str,
        hashes: Sequence[bytes],
        max_tokens: int,
        *,
        owner: str | None = None,
        hit: int = 0,
    ) -> None:
        """``task_id`` (of session ``owner``) was sent to ``slot``: the slot computes its
        prompt next, and belongs to that session (ORCH-2364); its blocks beyond ``hit``
        are prefill in flight until its first token (ORCH-2373)."""
        self.unpin(task_id)
        st = self.slots(replica_id, slot + 1)[slot]
        st.tasks.append(task_id)
        st.held = list(hashes)
        st.owner = owner
        self._owner[task_id] = owner
        self._where[task_id] = (replica_id, slot)
        self._remaining[task_id] = max_tokens
        self._prefill[task_id] = max(0, len(hashes) - hit)

    def progress(self, task_id: str, remaining: int, *, started: bool = False) -> None:
        """Tokens ``task_id`` may still generate (ORCH-2353, ORCH-2372); ``started``: it
        streamed a token, so its prompt is no longer prefill in flight (ORCH-2373)."""
        if task_id in self._remaining:
            self._remaining[task_id] = max(0, remaining)
        if started:
            self._prefill.pop(task_id, None)

    def pending_prefill(self, replica_id: str, *, below: int | None = None) -> int:
        """Prompt blocks still to prefill on the replica: those beyond the expected hit
        of the tasks pinned there that have not streamed a token yet, in slots numbered
        below ``below`` when given (ORCH-2373)."""
        total = 0
        for task, n in self._prefill.items():
            rid, slot = self._where.get(task, ("", 0))
            if rid == replica_id and (below is None or slot < below):
                total += n
        return total

    def remaining_in(self, replica_id: str, slot: int) -> int:
        """Tokens the task running in ``slot`` may still generate (0 when idle)."""
        table = self._slots.get(replica_id, [])
        if slot < 0 or slot >= len(table) or not table[slot].tasks:
            return 0
        return self._remaining.get(table[slot].tasks[0], 0)

    def unpin(
        self,
        task_id: str,
        *,
        text: Sequence[bytes] | None = None,
        engine_slot: int | None = None,
    ) -> None:
        """``task_id`` ended. With ``text`` (a completed task: prompt + answer) the
        slot now holds it; ``engine_slot`` is where the engine says it ran
        (ORCH-2351), which wins over where we pinned it."""
        where = self._where.pop(task_id, None)
        self._remaining.pop(task_id, None)
        self._prefill.pop(task_id, None)
        owner = self._owner.pop(task_id, None)
        if where is None:
            return
        rid, slot = where
        table = self._slots.get(rid)
        if table is None:
            return
        if task_id in table[slot].tasks:
            table[slot].tasks.remove(task_id)
        self._clock += 1
        if engine_slot is not None and engine_slot >= 0 and engine_slot != slot:
            if not table[slot].tasks:  # our guess was wrong: that slot never got the prompt
                table[slot].held = []
                table[slot].owner = None
            slot = engine_slot
            table = self.slots(rid, slot + 1)
        table[slot].released = self._clock
        if text is not None and not table[slot].tasks:
            table[slot].held = list(text)
            table[slot].owner = owner

    def remaining(self, task_id: str) -> int:
        return self._remaining.get(task_id, 0)

    def where(self, task_id: str) -> tuple[str, int] | None:
        return self._where.get(task_id)

    def pick_idle(
        self,
        replica_id: str,
        n_slots: int,
        hashes: Sequence[bytes],
        *,
        session: str | None = None,
        keep_others: bool = False,
    ) -> tuple[int, int]:
        """(hit in blocks, slot): the replica's idle slot sharing the most leading
        blocks with ``hashes``, among equals the one released longest ago, then the
        lowest id (ORCH-2352, ORCH-2365); with no hit, the idle slot whose loss costs
        least (ORCH-2354). ``keep_others`` (ORCH-2364): slots holding another
        session's history beyond the hit are not taken; (0, -1) when only such
        slots are idle. When our table thinks every slot busy but the caller knows
        one is free, the answer is still a slot."""
        slots = self.slots(replica_id, n_slots)
        hit, slot, released = 0, -1, 0
        kept = 0
        for i, s in enumerate(slots[:n_slots]):
            if s.busy:
                continue
            h = shared_blocks(s.held, hashes)
            if keep_others and _others(s, h, session):
                kept += 1
                continue
            if h > hit or (h == hit > 0 and s.released < released):
                hit, slot, released = h, i, s.released
        if hit <= 0:
            return 0, _idle_victim(slots, n_slots, keep_others=keep_others, session=session)
        return hit, slot

    def has_empty_idle(self, replica_id: str, n_slots: int) -> bool:
        """An idle slot that holds nothing (ORCH-2364)."""
        return self.empty_idle(replica_id, n_slots) is not None

    def empty_idle(self, replica_id: str, n_slots: int) -> int | None:
        """The highest-numbered idle slot that holds nothing, or None."""
        slots = self.slots(replica_id, n_slots)
        empty = [i for i, s in enumerate(slots[:n_slots]) if not s.busy and not s.held]
        return empty[-1] if empty else None

    def best_any_hit(self, replica_id: str, hashes: Sequence[bytes]) -> int:
        """Longest hit among all the replica's slots, busy or idle, in blocks."""
        return max(
            (shared_blocks(s.held, hashes) for s in self._slots.get(replica_id, ())), default=0
        )

    def best_idle_slot(self, replica_id: str, hashes: Sequence[bytes]) -> int | None:
        """The idle slot holding the longest hit (the lowest id among equals), or None."""
        best, slot = 0, None
        for i, s in enumerate(self._slots.get(replica_id, ())):
            h = 0 if s.busy else shared_blocks(s.held, hashes)
            if h > best:
                best, slot = h, i
        return slot

    def best_busy_slot(self, replica_id: str, hashes: Sequence[bytes]) -> tuple[int, int]:
        """(hit in blocks, slot) of the busy slot holding the longest hit, among equals
        the one whose running task has the fewest tokens left (its save waits for that
        task, ORCH-2372); (0, -1) when no busy slot holds a hit."""
        best, slot, left = 0, -1, 0
        for i, s in enumerate(self._slots.get(replica_id, ())):
            if not s.busy:
                continue
            h = shared_blocks(s.held, hashes)
            r = self._remaining.get(s.tasks[0], 0)
            if h > best or (h == best > 0 and r < left):
                best, slot, left = h, i, r
        return best, slot

    def best_idle_hit(self, replica_id: str, hashes: Sequence[bytes]) -> int:
        """Longest hit among the replica's idle slots, in blocks."""
        return max(
            (shared_blocks(s.held, hashes) for s in self._slots.get(replica_id, ()) if not s.busy),
            default=0,
        )


def _others(s: SlotState, hit: int, session: str | None) -> bool:
    """The slot holds another session's history beyond the hit (ORCH-2364)."""
    return s.owner is not None and s.owner != session and len(s.held) > hit


def _idle_victim(
    slots: Sequence[SlotState],
    n_slots: int,
    *,
    keep_others: bool = False,
    session: str | None = None,
) -> int:
    """The idle slot that holds the least: empty first, then released longest ago;
    among equals the highest id (llama-server's LRU rule, which an unpinned request
    follows: the guess then matches the slot the engine takes). With
    ``keep_others`` (ORCH-2364), slots holding another session's history than
    ``session``'s are skipped; -1 when none is left."""
    best, best_key = -1 if keep_others else 0, (2, 0)
    for i in range(n_slots):
        s = slots[i]
        if s.busy:
            continue
        if keep_others and _others(s, 0, session):
            continue
        key = (0 if not s.held else 1, s.released)
        if key <= best_key:
            best, best_key = i, key
    return best


def choose_slot(
    candidates: Sequence[ReplicaView],
    cfg: PlacementConfig,
    table: SlotTable,
    hashes: Sequence[bytes],
    *,
    affinity: str | None = None,
    tokens_per_block: float = 16.0,
    host_hits: Mapping[str, int] | None = None,
    session: str | None = None,
) -> SlotChoice | None:
    """The replica and slot the slot rules place the task on, and why (ORCH-2352..2373).

    Candidates are the set's Ready replicas; those without a free slot are
    ignored (ORCH-2313); None when none has one. ``host_hits`` are the replicas'
    expected hits in their engine's host prompt cache, in blocks (the replica
    prefix index; llama-server restores from it only for a request it places
    itself, so such a hit is not pinned).
    """
    from .placement_policy import imbalanced, least_loaded

    free = [r for r in candidates if r.free > 0]
    if not free:
        return None
    # ORCH-2364: while an idle slot is empty somewhere, no other session's history
    # is overwritten; replicas whose idle slots all hold such history drop out
    keep = any(table.has_empty_idle(r.replica_id, r.slots) for r in free)
    best = {
        r.replica_id: table.pick_idle(
            r.replica_id, r.slots, hashes, session=session, keep_others=keep
        )
        for r in free
    }
    # ORCH-2369: a replica with an empty idle slot can have the longest prefix its
    # idle slots hold copied there, another session's too: (hit, empty slot, source);
    # ORCH-2372: a busy slot's when it holds more than every idle one (the copy waits)
    copy: dict[str, tuple[int, int, int]] = {}
    waits: set[str] = set()
    for r in free:
        rid = r.replica_id
        empty = table.empty_idle(rid, r.slots)
        if empty is None:
            continue
        source = table.best_idle_slot(rid, hashes)
        held = table.best_idle_hit(rid, hashes)
        busy_hit, busy_slot = table.best_busy_slot(rid, hashes)
        if busy_hit > held:
            held, source = busy_hit, busy_slot
            waits.add(rid)
        if source is not None and held > best[rid][0]:
            copy[rid] = (held, empty, source)
        else:
            waits.discard(rid)
    if keep:
        free = [r for r in free if best[r.replica_id][1] >= 0 or r.replica_id in copy]
    coolest = least_loaded(free, affinity)
    # ORCH-2366: the host cache holds a prompt only once no slot does
    host = {
        rid: n
        for rid, n in (host_hits or {}).items()
        if rid in best and n > table.best_any_hit(rid, hashes)
    }

    def score(rid: str) -> int:
        return max(best[rid][0], copy.get(rid, (0, 0, 0))[0], host.get(rid, 0))

    def on(r: ReplicaView, decision: SlotDecision) -> SlotChoice:
        rid = r.replica_id
        if rid in copy and copy[rid][0] >= host.get(rid, 0):  # ORCH-2369, ORCH-2372
            hit, slot, source = copy[rid]
            return SlotChoice(rid, slot, decision, score(rid), True, True, source, rid in waits)
        hit, slot = best[rid]
        pin = hit > 0 and hit >= host.get(rid, 0)
        return SlotChoice(rid, slot, decision, score(rid), pin)

    top = max(score(r.replica_id) for r in free)
    if cfg.slot_wait_tokens > 0:  # ORCH-2353: a much longer prefix about to free up
        wait: SlotChoice | None = None
        min_extra = cfg.slot_wait_min_tokens / tokens_per_block
        for r in free:
            for i, s in enumerate(table.slots(r.replica_id, r.slots)[: r.slots]):
                if len(s.tasks) != 1:  # idle, or someone already waits behind it
                    continue
                hit = shared_blocks(s.held, hashes)
                if hit - top < min_extra or hit <= 0:
                    continue
                if table.remaining(s.tasks[0]) > cfg.slot_wait_tokens:
                    continue
                if wait is None or hit > wait.hit_blocks:
                    wait = SlotChoice(r.replica_id, i, "wait", hit, True)
        if wait is not None:
            return wait
    if top <= 0:  # ORCH-2354
        return on(coolest, "load")

    def cost(r: ReplicaView) -> float:
        """ORCH-2373: blocks prefilled on ``r`` before the task's first token: its own
        beyond the hit, the prefill in flight in lower-numbered slots (the engine fills
        its batches in slot order), and a busy source's wait (ORCH-2372)."""
        rid = r.replica_id
        own = len(hashes) - score(rid)
        ahead = table.pending_prefill(rid, below=on(r, "slot").slot)
        wait = 0.0
        if rid in waits and copy[rid][0] >= host.get(rid, 0):
            left = table.remaining_in(rid, copy[rid][2])
            wait = left * DECODE_STEP_TOKENS / tokens_per_block
        return own + ahead + wait

    costs = {r.replica_id: cost(r) for r in free}
    low = min(costs.values())
    tied = [r for r in free if costs[r.replica_id] == low]
    warm = next((r for r in tied if r.replica_id == affinity), None)
    warm = warm or least_loaded(tied, affinity)
    if warm is not coolest and imbalanced(warm, coolest, cfg):  # ORCH-2355
        return on(coolest, "guard")
    if score(warm.replica_id) <= 0:  # the others' prefill in flight costs more than a miss
        return on(warm, "load")
    choice = on(warm, "slot")
    return choice if choice.pin else on(warm, "prefix")


def slot_hits(
    table: SlotTable, views: Sequence[ReplicaView], hashes: Sequence[bytes]
) -> Mapping[str, int]:
    """Best idle-slot hit per replica, in blocks (for the policy host's view)."""
    return {v.replica_id: table.best_idle_hit(v.replica_id, hashes) for v in views}
