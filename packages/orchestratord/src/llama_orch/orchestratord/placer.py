"""Each pool's placement policy and prefix index at dispatch (ORCH-2301..2322).

The dispatch loop asks :meth:`Placer.chooser` for the function that picks a
replica inside the chosen replica set (``least-loaded``, ``round-robin`` or
``prefix-aware``, :mod:`llama_orch.core.placement_policy`), and tells
:meth:`Placer.dispatched` where the task went: the prompt's blocks are then
recorded in that replica's part of the pool's
:class:`~llama_orch.core.prefix_index.PrefixIndex` (learned from our own
dispatches, ORCH-2302) and the decision is counted (ORCH-2320). The expected
hit per replica is also what the policy host's placement hook sees
(``ReplicaInfo.prefix_hit_tokens``, ORCH-2315).

On a pool whose engine keeps a prompt cache per slot (its adapter declares
``engine_slots``: llama-server), ``prefix-aware`` follows the slot rules
(ORCH-2350..2373, :mod:`llama_orch.core.slot_table`) and keeps a
:class:`~llama_orch.core.slot_table.SlotTable` per pool: the dispatch pins the
task to the chosen engine slot (``TaskRecord.engine_slot``, sent as
``GenerateRequest.engine_slot``, with the slot to copy first), and the end of
the run frees the slot and records what it then holds, on the slot the engine
reported (ORCH-2351). Other pools (vLLM) keep the replica-level rule.
"""

from __future__ import annotations

from llama_orch.core.adapter_api import Capability
from llama_orch.core.placement import Chooser, ReplicaView
from llama_orch.core.placement_policy import Decision, choose_in_set
from llama_orch.core.prefix_index import PrefixIndex
from llama_orch.core.slot_table import SlotTable, choose_slot

from .admission import known_capabilities
from .metrics import Metrics
from .migration import streamed_text
from .pools import Pool, Replica
from .tasks import TaskRecord

__all__ = ["Held", "Placer"]

# a pool's last choice: (task, decision, its prompt's block hashes), and with
# slot rules (task, replica, slot, pin, source slot); see Placer.hold
_Choice = tuple[str, Decision, list[bytes]]
_SlotChoice = tuple[str, str, int, bool, int | None, int]
Held = tuple[_Choice | None, _SlotChoice | None]


def _owner(rec: TaskRecord) -> str | None:
    """The session a slot then belongs to (ORCH-2364): sessions are per tenant."""
    key = rec.session_key
    return None if key is None else f"{key[0]}\x00{key[1]}"


class Placer:
    def __init__(self, pools: dict[str, Pool], metrics: Metrics) -> None:
        self._metrics = metrics
        self._index: dict[str, PrefixIndex] = {}
        for pool in pools.values():
            self.index(pool)
        self._last: dict[str, str] = {}  # pool -> replica round-robin picked last
        # pool -> (task, decision, its prompt's block hashes) of the last choice; the
        # dispatch loop starts the task in the same step, so one entry per pool is enough
        self._pending: dict[str, _Choice] = {}
        # slot rules (ORCH-2350): per pool its slot table, the (replica, slot) of the
        # last choice, and the tasks pinned to a slot (their progress feeds ORCH-2353,
        # ORCH-2372, ORCH-2373)
        self._slots: dict[str, SlotTable] = {}
        self._pending_slot: dict[str, _SlotChoice] = {}
        self._pinned: dict[str, dict[str, TaskRecord]] = {}

    def index(self, pool: Pool) -> PrefixIndex:
        """The pool's index (made on first use: pools may be added at run time)."""
        index = self._index.get(pool.id)
        if index is None:
            cfg = pool.config.placement
            index = self._index[pool.id] = PrefixIndex(cfg.block_chars, cfg.chars_per_token)
        return index

    def slot_rules(self, pool: Pool) -> bool:
        """ORCH-2371: ``prefix-aware`` places by engine slots on a pool whose engine
        declares ``engine_slots`` (asked at admission, before any dispatch)."""
        cfg = pool.config.placement
        if cfg.policy != "prefix-aware" or not cfg.engine_slots:
            return False
        return any(
            Capability.ENGINE_SLOTS in (known_capabilities(r.adapter) or ())
            for r in pool.replicas.values()
        )

    def slot_table(self, pool: Pool) -> SlotTable:
        table = self._slots.get(pool.id)
        if table is None:
            table = self._slots[pool.id] = SlotTable()
        return table

    def _sync_epochs(self, pool: Pool) -> None:
        index = self.index(pool)
        table = self._slots.get(pool.id)
        for rid, state in pool.states.items():
            # a restarted engine starts with an empty cache (ORCH-2304, ORCH-2350)
            epoch = (state.base_url, state.pid, state.restarts)
            index.observe_epoch(rid, epoch)
            if table is not None:
                table.observe_epoch(rid, epoch)

    def _hashes(self, pool: Pool, rec: TaskRecord) -> list[bytes]:
        return self.index(pool).hashes(rec.request.prompt)

    def expected_hits(self, pool: Pool, rec: TaskRecord) -> dict[str, int]:
        """Expected prefix hit in tokens of the task's prompt on each replica (ORCH-2315)."""
        pending = self._pending.get(pool.id)
        hashes = pending[2] if pending and pending[0] == rec.task_id else []
        hashes = hashes or self._hashes(pool, rec)
        index = self.index(pool)
        cfg = pool.config.placement
        if self.slot_rules(pool):  # the best idle slot's hit, or the host cache's
            table = self.slot_table(pool)
            return {
                rid: index.tokens(
                    max(table.best_idle_hit(rid, hashes),
                        index.match(rid, hashes) if cfg.host_cache else 0)
                )
                for rid in pool.replicas
            }  # fmt: skip
        return {rid: index.tokens(index.match(rid, hashes)) for rid in pool.replicas}

    def chooser(self, pool: Pool, rec: TaskRecord, affinity: str | None) -> Chooser:
        cfg = pool.config.placement

        def choose(views: list[ReplicaView]) -> ReplicaView | None:
            if self.slot_rules(pool):
                return self._choose_slot(pool, rec, affinity, views)
            hashes: list[bytes] = []
            hits: dict[str, int] | None = None
            if cfg.policy == "prefix-aware":
                self._sync_epochs(pool)
                index = self.index(pool)
                hashes = self._hashes(pool, rec)
                hits = {v.replica_id: index.match(v.replica_id, hashes) for v in views}
            picked = choose_in_set(
                views, cfg, affinity=affinity, hits=hits, last=self._last.get(pool.id)
            )
            if picked is None:
                return None
            self._pending[pool.id] = (rec.task_id, picked[1], hashes)
            return picked[0]

        return choose

    def _choose_slot(
        self, pool: Pool, rec: TaskRecord, affinity: str | None, views: list[ReplicaView]
    ) -> ReplicaView | None:
        """ORCH-2352..2355: a replica and one of its engine slots."""
        self._sync_epochs(pool)
        table = self.slot_table(pool)
        for other in self._pinned.get(pool.id, {}).values():  # tokens left, prefill done
            left = other.request.max_tokens - other.tokens_out
            table.progress(other.task_id, left, started=other.tokens_out > 0)
        index = self.index(pool)
        hashes = self._hashes(pool, rec)
        tokens_per_block = index.block_chars / index.chars_per_token
        cfg = pool.config.placement
        host = None
        if cfg.host_cache:  # ORCH-2352: prompts the engine keeps beside its slots
            host = {v.replica_id: index.match(v.replica_id, hashes) for v in views}
        got = choose_slot(
            views, cfg, table, hashes,
            affinity=affinity, tokens_per_block=tokens_per_block, host_hits=host,
            session=_owner(rec),
        )  # fmt: skip
        if got is None:
            return None
        self._pending[pool.id] = (rec.task_id, got.decision, hashes)
        self._pending_slot[pool.id] = (
            rec.task_id, got.replica_id, got.slot, got.pin, got.source, got.hit_blocks
        )  # fmt: skip
        return next(v for v in views if v.replica_id == got.replica_id)

    def _pin(self, pool: Pool, replica: Replica, rec: TaskRecord, hashes: list[bytes]) -> None:
        """ORCH-2350, ORCH-2354, ORCH-2356: record the run on the chosen slot (or, when
        the policy host placed it elsewhere, that replica's best idle slot) and pin
        it there when the slot holds part of the prompt."""
        table = self.slot_table(pool)
        rid, st = replica.state.replica_id, replica.state
        pending = self._pending_slot.pop(pool.id, ("", "", -1, False, None, 0))
        task_id, chosen_rid, slot, pin, source, hit = pending
        owner = _owner(rec)
        if task_id != rec.task_id or chosen_rid != rid or slot < 0:
            n = max(1, st.slots)
            keep = table.has_empty_idle(rid, n)  # ORCH-2364
            hit, slot = table.pick_idle(rid, n, hashes, session=owner, keep_others=keep)
            pin = hit > 0 or (keep and table.best_idle_hit(rid, hashes) > 0)
            if slot < 0:  # only other sessions' slots are idle here
                hit, slot = table.pick_idle(rid, n, hashes, session=owner)
                pin = hit > 0
            source = table.best_idle_slot(rid, hashes) if pin and hit <= 0 else None
            if source is not None:
                hit = table.best_idle_hit(rid, hashes)
        table.pin(rid, slot, rec.task_id, hashes, rec.request.max_tokens, owner=owner, hit=hit)
        self._pinned.setdefault(pool.id, {})[rec.task_id] = rec
        rec.engine_slot = slot if pin else None
        rec.engine_slot_source = source if pin and source != slot else None  # ORCH-2369

    def last_pick(self, pool: Pool) -> str | None:
        """The replica round-robin picked last in ``pool`` (ORCH-2311)."""
        return self._last.get(pool.id)

    def hold(self, pool: Pool) -> Held:
        """Take the pool's last choice away while a state store moves its reservation
        (ORCH-2575): other dispatches may choose meanwhile; :meth:`resume` puts it back."""
        return self._pending.pop(pool.id, None), self._pending_slot.pop(pool.id, None)

    def resume(self, pool: Pool, held: Held) -> None:
        choice, slot = held
        if choice is not None:
            self._pending[pool.id] = choice
        if slot is not None:
            self._pending_slot[pool.id] = slot

    def dispatched(self, pool: Pool, replica: Replica, rec: TaskRecord) -> None:
        """The task starts on ``replica``: learn its prompt there, count the decision."""
        cfg = pool.config.placement
        rid = replica.state.replica_id
        task_id, decision, hashes = self._pending.pop(pool.id, ("", "load", []))
        if task_id != rec.task_id:
            decision, hashes = "load", []
        rec.engine_slot = rec.engine_slot_used = rec.engine_slot_source = None
        slots = self.slot_rules(pool)
        if slots:
            self._pin(pool, replica, rec, hashes or self._hashes(pool, rec))
        if cfg.policy == "round-robin":
            self._last[pool.id] = rid
        elif cfg.policy == "prefix-aware" and cfg.learn == "dispatch" and not slots:
            index = self.index(pool)
            if not hashes:
                hashes = self._hashes(pool, rec)
            st = replica.state
            cache_tokens = cfg.cache_tokens or max(1, st.ctx * max(1, st.slots))
            index.record(rid, hashes, index.capacity_blocks(cache_tokens))
        attrs = {"engine": pool.engine, "pool_id": pool.id}
        attrs |= {"placement": cfg.policy, "decision": decision}
        self._metrics.placement_decisions.add(1, attrs)

    def finished(self, pool: Pool, replica: Replica, rec: TaskRecord) -> None:
        """A task completed on ``replica``: its engine now holds the prompt followed by
        the generated text, which a session's next turn starts with (ORCH-2302)."""
        cfg = pool.config.placement
        if self._unpin(pool, rec) and not cfg.host_cache:  # slot rules (ORCH-2350)
            return
        if cfg.policy == "round-robin" or cfg.policy == "least-loaded":
            return
        if rec.state != "completed" or not rec.tokens_out:
            return
        index = self.index(pool)
        st = replica.state
        text = rec.request.prompt + "".join(streamed_text(rec))
        cache_tokens = cfg.cache_tokens or max(1, st.ctx * max(1, st.slots))
        index.record(st.replica_id, index.hashes(text), index.capacity_blocks(cache_tokens))

    def _unpin(self, pool: Pool, rec: TaskRecord) -> bool:
        """ORCH-2350, ORCH-2351: the run ended; a completed one leaves its prompt and
        answer in the slot the engine reports. False: it was placed without a slot."""
        pinned = self._pinned.get(pool.id, {})
        if pinned.pop(rec.task_id, None) is None:
            return False
        text = None
        if rec.state == "completed":
            full = rec.request.prompt + "".join(streamed_text(rec))
            text = self.index(pool).hashes(full)
        self.slot_table(pool).unpin(rec.task_id, text=text, engine_slot=rec.engine_slot_used)
        return True
