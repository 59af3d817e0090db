"""ORCH-2350..2373: the slot table and prefix-aware placement's slot rules (pure)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from llama_orch.core.placement import ReplicaView
from llama_orch.core.placement_policy import PlacementConfig
from llama_orch.core.prefix_index import block_hashes
from llama_orch.core.replica import ReplicaSetKey
from llama_orch.core.slot_table import SlotTable, choose_slot, shared_blocks

KEY = ReplicaSetKey("llamacpp-http", "d", 2048, "v1")
BLOCK = 64  # characters per block; 16 tokens at 4 characters per token
SYS_A = "You are the library's help desk. " * 40  # ~20 blocks
SYS_B = "You are the bakery's order desk. " * 40
CFG = PlacementConfig(
    policy="prefix-aware", block_chars=BLOCK, slot_wait_min_tokens=128, slot_wait_tokens=32
)


def _h(text: str) -> list[bytes]:
    return block_hashes(text, BLOCK)


def _view(rid: str, slots: int = 2, busy: int = 0) -> ReplicaView:
    return ReplicaView(rid, KEY, True, slots, busy)


def test_the_table_follows_pins_completions_and_the_engines_report():
    """ORCH-2350, ORCH-2351: a pin makes the slot busy holding the prompt; a
    completion leaves prompt + answer there, on the slot the engine reports."""
    t = SlotTable()
    t.pin("r0", 1, "a", _h(SYS_A + "q1"), max_tokens=16)
    assert [s.busy for s in t.slots("r0", 2)] == [False, True]
    assert t.where("a") == ("r0", 1) and t.remaining("a") == 16
    t.progress("a", 3)
    assert t.remaining("a") == 3
    assert t.best_idle_hit("r0", _h(SYS_A)) == 0  # held by a busy slot only
    answer = SYS_A + "q1 and the answer is a fairly long one " * 3
    t.unpin("a", text=_h(answer), engine_slot=0)  # the engine ran it in slot 0
    s0, s1 = t.slots("r0", 2)
    assert not s0.busy and not s1.busy and s0.held == _h(answer)
    assert s1.held == []  # the guessed slot never got the prompt
    assert t.best_idle_hit("r0", _h(answer + "next turn")) == len(_h(answer))
    assert t.where("a") is None and t.remaining("a") == 0
    t.unpin("a")  # unknown task: nothing happens
    # ORCH-2350 (as ORCH-2304): a restarted engine holds nothing
    t.observe_epoch("r0", 1)
    t.pin("r0", 0, "b", _h(SYS_B), max_tokens=4)
    t.observe_epoch("r0", 2)
    assert t.slots("r0", 2)[0].held == [] and t.where("b") is None


def test_an_idle_slot_holding_the_prefix_wins_a_busy_one_does_not():
    """ORCH-2352: the replica whose *idle* slot holds the prefix wins, and the task is
    pinned to that slot; a prefix in a busy slot (a replica-level index would count
    it) is no hit when its task has many tokens left."""
    t = SlotTable()
    t.pin("r0", 0, "a", _h(SYS_A + "q1"), max_tokens=200)  # busy, far from done
    t.pin("r1", 1, "b", _h(SYS_A + "q2"), max_tokens=4)
    t.unpin("b", text=_h(SYS_A + "q2 answer"))  # idle in r1 slot 1
    views = [_view("r0", busy=1), _view("r1")]
    got = choose_slot(views, CFG, t, _h(SYS_A + "q3"))
    assert got is not None
    assert (got.replica_id, got.slot, got.decision) == ("r1", 1, "slot") and got.pin
    assert got.hit_blocks == len(_h(SYS_A))


def _other_slot_taken() -> SlotTable:
    """A table where r0's slot 1 idles holding unrelated text of no session."""
    t = SlotTable()
    t.pin("r0", 1, "z", _h("Z" * 300), max_tokens=1)
    t.unpin("z", text=_h("Z" * 300))
    return t


def test_a_busy_slot_about_to_free_is_waited_for():
    """ORCH-2353: a much longer prefix in a busy slot whose task is nearly done is
    worth a short wait; not when another task already waits there, not when the
    task there has many tokens left, not when the gain is small, never by default.
    r0's other slot holds unrelated text, so no empty slot there could take a copy
    of the busy slot's prefix instead (ORCH-2372)."""
    t = _other_slot_taken()
    t.pin("r0", 0, "a", _h(SYS_A + "q1"), max_tokens=8)
    views = [_view("r0", busy=1), _view("r1")]
    off = PlacementConfig(policy="prefix-aware", block_chars=BLOCK)
    got = choose_slot(views, off, t, _h(SYS_A + "q2"))
    assert got is not None and got.decision == "load" and got.replica_id == "r1"
    got = choose_slot(views, CFG, t, _h(SYS_A + "q2"))
    assert got is not None and (got.replica_id, got.slot, got.decision) == ("r0", 0, "wait")
    t.pin("r0", 0, "w", _h(SYS_A + "q2"), max_tokens=8)  # someone waits behind it now
    views = [_view("r0", busy=2), _view("r1")]
    got = choose_slot(views, CFG, t, _h(SYS_A + "q3"))
    assert got is not None and got.decision == "load" and got.replica_id == "r1"
    t2 = _other_slot_taken()
    t2.pin("r0", 0, "a", _h(SYS_A + "q1"), max_tokens=CFG.slot_wait_tokens + 1)
    got = choose_slot([_view("r0", busy=1), _view("r1")], CFG, t2, _h(SYS_A + "q2"))
    assert got is not None and got.decision == "load"
    short = "Hi. " * 40  # 2 blocks = 32 tokens < slot_wait_min_tokens
    t3 = _other_slot_taken()
    t3.pin("r0", 0, "a", _h(short + "q1"), max_tokens=1)
    got = choose_slot([_view("r0", busy=1), _view("r1")], CFG, t3, _h(short + "q2"))
    assert got is not None and got.decision == "load"


def test_without_a_hit_the_emptiest_then_stalest_idle_slot_is_taken():
    """ORCH-2354: no hit anywhere: least-loaded replica, and there an empty slot, else
    the slot released longest ago, so slots holding other prefixes keep them."""
    t = SlotTable()
    t.pin("r0", 0, "a", _h(SYS_A), max_tokens=1)
    t.unpin("a", text=_h(SYS_A))
    got = choose_slot([_view("r0", slots=3)], CFG, t, _h(SYS_B))
    # empty slots 1 and 2: the highest id, as llama-server's LRU takes it
    assert got is not None and (got.slot, got.decision) == (2, "load")
    assert not got.pin  # the engine chooses (and may restore from its host cache)
    t.pin("r0", 1, "b", _h(SYS_B), max_tokens=1)
    t.unpin("b", text=_h(SYS_B))
    t.pin("r0", 2, "c", _h("Z" * 400), max_tokens=1)
    t.unpin("c", text=_h("Z" * 400))
    got = choose_slot([_view("r0", slots=3)], CFG, t, _h("Q" * 400))
    assert got is not None and got.slot == 0  # the stalest of three full slots
    # least-loaded across replicas: r1 has more free slots
    got = choose_slot([_view("r0", slots=3, busy=1), _view("r1", slots=3)], CFG, t, _h("Q" * 400))
    assert got is not None and got.replica_id == "r1"


def test_a_longer_hit_in_the_engines_host_cache_is_not_pinned():
    """ORCH-2352, ORCH-2354: a replica whose host prompt cache (the replica index)
    holds a longer prefix than any idle slot wins, unpinned (llama-server restores
    from that cache only for requests it places itself); an idle slot holding at
    least as much is pinned."""
    t = SlotTable()
    t.pin("r1", 0, "a", _h(SYS_A[:640]), max_tokens=1)
    t.unpin("a", text=_h(SYS_A[:640]))  # r1 slot 0 holds 10 blocks of SYS_A
    views = [_view("r0"), _view("r1")]
    n = len(_h(SYS_A))
    got = choose_slot(views, CFG, t, _h(SYS_A + "q"), host_hits={"r0": n, "r1": 0})
    assert got is not None and (got.replica_id, got.decision, got.pin) == ("r0", "prefix", False)
    assert got.hit_blocks == n
    got = choose_slot(views, CFG, t, _h(SYS_A + "q"), host_hits={"r0": 0, "r1": 10})
    assert got is not None and (got.replica_id, got.slot, got.decision) == ("r1", 0, "slot")
    assert got.pin


def test_the_imbalance_guard_applies():
    """ORCH-2355: a warm replica far busier than the coolest loses to it."""
    cfg = PlacementConfig(policy="prefix-aware", block_chars=BLOCK, imbalance_abs=1)
    t = SlotTable()
    for i in range(3):
        t.pin("r0", i, f"t{i}", _h(f"other {i} " * 40), max_tokens=500)
    t.pin("r0", 3, "a", _h(SYS_A), max_tokens=1)
    t.unpin("a", text=_h(SYS_A))
    views = [_view("r0", slots=6, busy=3), _view("r1", slots=6)]
    got = choose_slot(views, cfg, t, _h(SYS_A + "q"))
    assert got is not None and (got.replica_id, got.decision) == ("r1", "guard")
    assert choose_slot([_view("r0", slots=1, busy=1)], cfg, t, _h(SYS_A)) is None


PROMPTS = [SYS_A + "q1", SYS_A + "q2", SYS_B + "q1", SYS_B + "q2", "Z" * 300]


class SlotMachine(RuleBasedStateMachine):
    """ORCH-2350..2373, stateful: whatever the sequence of placements and endings, the
    choice is a replica with a free slot, an idle slot unless the decision is
    ``wait`` (then exactly one task runs there, nearly done), a ``slot`` decision's
    hit is what its slot (or the copy's source) holds and no longer than the best
    offer, a busy source only where no idle slot holds as much, and the table never
    has more tasks than were placed."""

    def __init__(self) -> None:
        super().__init__()
        self.table = SlotTable()
        self.running: dict[str, tuple[str, int]] = {}
        self.n = 0

    def _views(self) -> list[ReplicaView]:
        return [
            _view(rid, slots=2, busy=sum(1 for r, _ in self.running.values() if r == rid))
            for rid in ("r0", "r1")
        ]

    def _offer(self, v: ReplicaView, hashes: list[bytes]) -> int:
        """What a replica can serve from a slot: its idle slots' hit, or with an empty
        idle slot any slot's, copied there (ORCH-2369, ORCH-2372)."""
        idle = self.table.best_idle_hit(v.replica_id, hashes)
        if self.table.has_empty_idle(v.replica_id, v.slots):
            return max(idle, self.table.best_any_hit(v.replica_id, hashes))
        return idle

    @rule(p=st.sampled_from(PROMPTS), max_tokens=st.integers(1, 64))
    def place(self, p: str, max_tokens: int) -> None:
        hashes = _h(p)
        views = self._views()
        got = choose_slot(views, CFG, self.table, hashes)
        if all(v.free == 0 for v in views):
            assert got is None
            return
        assert got is not None
        view = next(v for v in views if v.replica_id == got.replica_id)
        assert view.free > 0 and 0 <= got.slot < view.slots
        assert got.pin == (got.hit_blocks > 0 or got.fill)
        assert (got.source is not None) == got.fill  # ORCH-2369
        state = self.table.slots(got.replica_id, 2)[got.slot]
        if got.decision == "wait":
            assert len(state.tasks) == 1
            assert self.table.remaining(state.tasks[0]) <= CFG.slot_wait_tokens
            assert shared_blocks(state.held, hashes) * 16 >= CFG.slot_wait_min_tokens
        else:
            assert not state.busy
        if got.decision == "slot":
            best = max(self._offer(v, hashes) for v in views if v.free)
            # ORCH-2369: an empty slot gets the source slot's cache copied first
            held = self.table.slots(got.replica_id, 2)[got.source].held if got.fill else state.held
            # ORCH-2373: prefill in flight elsewhere can make a shorter hit the cheaper one
            assert best >= got.hit_blocks == shared_blocks(held, hashes) > 0
            if got.fill:  # ORCH-2372: a busy source only when no idle slot holds as much
                source = self.table.slots(got.replica_id, 2)[got.source]
                assert got.source_busy == source.busy
                if source.busy:
                    assert self.table.best_idle_hit(got.replica_id, hashes) < got.hit_blocks
        self.n += 1
        task = f"t{self.n}"
        self.table.pin(got.replica_id, got.slot, task, hashes, max_tokens)
        self.running[task] = (got.replica_id, got.slot)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), completed=st.booleans())
    def end(self, data: st.DataObject, completed: bool) -> None:
        task = data.draw(st.sampled_from(sorted(self.running)))
        self.running.pop(task)
        text = _h(PROMPTS[0] + " answer") if completed else None
        self.table.unpin(task, text=text)

    @invariant()
    def tasks_match(self) -> None:
        pinned = sorted(
            t for rid in ("r0", "r1") for s in self.table.slots(rid, 2) for t in s.tasks
        )
        assert pinned == sorted(self.running)


SlotMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_slot_machine = SlotMachine.TestCase


def _done(t: SlotTable, rid: str, slot: int, task: str, text: str, owner: str | None) -> None:
    """``task`` of session ``owner`` ran on ``rid``'s ``slot`` and completed with ``text``."""
    t.pin(rid, slot, task, _h(text), max_tokens=1, owner=owner)
    t.unpin(task, text=_h(text))


def test_a_new_session_fills_an_empty_slot_before_taking_another_sessions_history():
    """ORCH-2364: while an idle slot is empty, a new session does not take the idle slot
    where another session's history follows the shared system prompt; it is pinned to
    the empty slot (llama-server would give it the similar slot); the session that
    owns the history still gets its own slot, and with no empty slot left the new
    session does take an idle session's slot."""
    t = SlotTable()
    s1 = SYS_A + "u1: tell me about owls. a1: owls hunt at night. "
    _done(t, "r0", 0, "a", s1, "s1")
    views = [_view("r0", slots=2)]  # slot 1 is empty
    got = choose_slot(views, CFG, t, _h(SYS_A + "u9: tell me about tea."), session="s2")
    assert got is not None and (got.replica_id, got.slot, got.decision) == ("r0", 1, "slot")
    assert got.pin and got.fill  # pinned to the empty slot
    assert got.source == 0  # ORCH-2369: slot 0's cache copied there first: a hit
    assert got.hit_blocks == len(_h(SYS_A))
    got = choose_slot(views, CFG, t, _h(s1 + "u2: and why?"), session="s1")
    assert got is not None and (got.slot, got.decision, got.pin) == (0, "slot", True)
    assert got.hit_blocks == len(_h(s1))
    # another replica with an empty slot counts too: r1 is chosen, nothing to pin there
    views2 = [_view("r0", slots=1), _view("r1", slots=1)]
    got = choose_slot(views2, CFG, t, _h(SYS_A + "u9: tell me about tea."), session="s2")
    assert got is not None and (got.replica_id, got.slot, got.pin) == ("r1", 0, False)
    assert got.source is None  # nothing on r1 to copy
    # no empty slot anywhere: the idle session's slot is taken, pinned, for its hit
    _done(t, "r0", 1, "b", SYS_B + "u1: bread?", "s3")
    got = choose_slot(views, CFG, t, _h(SYS_A + "u9: tell me about tea."), session="s2")
    assert got is not None and (got.slot, got.decision, got.pin) == (0, "slot", True)
    # a slot of no session (a task without one) is no one's history: taken as before
    t2 = SlotTable()
    _done(t2, "r0", 0, "c", s1, None)
    got = choose_slot(views, CFG, t2, _h(SYS_A + "u9: tell me about tea."), session="s2")
    assert got is not None and (got.slot, got.decision) == (0, "slot")


def test_among_equal_hits_the_slot_released_longest_ago_is_taken():
    """ORCH-2365: two idle slots hold the same system prompt and different sessions'
    histories; the one released longest ago goes, not the lowest id."""
    t = SlotTable()
    _done(t, "r0", 1, "a", SYS_A + "u1: owls? a1: they hunt.", "s1")
    _done(t, "r0", 0, "b", SYS_A + "u1: tea? a1: it is a leaf.", "s2")
    got = choose_slot([_view("r0")], CFG, t, _h(SYS_A + "u1: maps?"), session="s3")
    assert got is not None and (got.slot, got.decision, got.pin) == (1, "slot", True)


def test_the_host_cache_counts_only_beyond_what_a_slot_holds():
    """ORCH-2366: the replica index says r0's engine saw the system prompt, but a busy
    slot of r0 still holds it, so the host cache has nothing of it: no hit on r0, and
    the task goes to the less loaded replica (r0 has no empty slot to copy into)."""
    t = _other_slot_taken()
    t.pin("r0", 0, "a", _h(SYS_A + "u1: owls?"), max_tokens=100, owner="s1")
    n = len(_h(SYS_A))
    views = [_view("r0", busy=1), _view("r1")]
    got = choose_slot(views, CFG, t, _h(SYS_A + "u1: tea?"), host_hits={"r0": n}, session="s2")
    assert got is not None and (got.replica_id, got.decision) == ("r1", "load")


def test_a_busy_slot_is_copied_when_no_idle_slot_holds_the_prefix():
    """ORCH-2372: r0's only slot holding the system prompt is busy with a task nearly
    done, its other slot is empty: the task is pinned there with the busy slot as the
    copy source (the engine saves it when its task ends) instead of a cold prefill on
    r1; among busy sources the one with the fewest tokens left; an idle source on r1
    needs no wait and wins; a source with many tokens left costs more than the cold
    prefill (ORCH-2373)."""
    t = SlotTable()
    t.pin("r0", 0, "a", _h(SYS_A + "u1: owls?"), max_tokens=20, owner="s1")
    t.progress("a", 20, started=True)  # generating: its prompt is no prefill in flight
    views = [_view("r0", busy=1), _view("r1")]
    got = choose_slot(views, CFG, t, _h(SYS_A + "u1: tea?"), session="s2")
    assert got is not None
    assert (got.replica_id, got.slot, got.decision, got.source) == ("r0", 1, "slot", 0)
    assert got.pin and got.fill and got.source_busy and got.hit_blocks == len(_h(SYS_A))
    t.progress("a", 200)  # far from done: 200 decode steps cost more than 320 tokens
    got = choose_slot(views, CFG, t, _h(SYS_A + "u1: tea?"), session="s2")
    assert got is not None and (got.replica_id, got.decision, got.pin) == ("r1", "load", False)
    t.progress("a", 20)
    t.pin("r0", 1, "b", _h(SYS_A + "u1: maps?"), max_tokens=100, owner="s3")
    t.progress("b", 5, started=True)  # nearly done
    views = [_view("r0", slots=3, busy=2), _view("r1")]
    got = choose_slot(views, CFG, t, _h(SYS_A + "u1: tea?"), session="s2")
    assert got is not None and (got.replica_id, got.slot, got.source) == ("r0", 2, 1)
    # r1: an idle slot to copy from
    _done(t, "r1", 0, "c", SYS_A + "u1: bread? a long answer. " * 4, "s4")
    views = [_view("r0", slots=3, busy=2), _view("r1", slots=3)]
    got = choose_slot(views, CFG, t, _h(SYS_A + "u1: tea?"), session="s2")
    assert got is not None and (got.replica_id, got.source, got.source_busy) == ("r1", 0, False)


def test_the_replica_with_less_prefill_in_flight_before_the_slot_is_taken():
    """ORCH-2373: both replicas can copy the system prompt into their empty slot 1 for
    a new session and run one task each in slot 0; r0's is a cold prefill still in
    flight (the engine fills batches in slot order: slot 1 waits for it), r1's has
    streamed: r1, though least-loaded alone would take r0 (the lower id)."""
    t = SlotTable()
    for rid, task in (("r0", "a"), ("r1", "b")):
        _done(t, rid, 2, f"{task}0", SYS_A + f"u1: {task}? a long answer. " * 4, f"s-{task}")
        t.pin(rid, 0, task, _h(SYS_B + "u1: long?"), max_tokens=64, owner=f"s-{task}2", hit=0)
    assert t.pending_prefill("r0") == t.pending_prefill("r1") == len(_h(SYS_B + "u1: long?"))
    assert t.pending_prefill("r0", below=0) == 0  # nothing before slot 0
    t.progress("b", 60, started=True)
    assert t.pending_prefill("r1") == 0
    views = [_view("r0", slots=3, busy=1), _view("r1", slots=3, busy=1)]
    got = choose_slot(views, CFG, t, _h(SYS_A + "u1: tea?"), session="s-new")
    assert got is not None and got.decision == "slot" and got.fill and got.slot == 1
    assert got.replica_id == "r1"
    t.progress("a", 60, started=True)
    got = choose_slot(views, CFG, t, _h(SYS_A + "u1: tea?"), session="s-new")
    assert got is not None and got.replica_id == "r0"  # equal again: least-loaded's order


def test_a_turn_leaves_its_slot_only_when_the_prefill_ahead_costs_more_than_its_history():
    """ORCH-2373: a session's history is in r0's slot 1; a cold prefill runs in r0's
    slot 0. While it is short, the next turn stays (a few new blocks to evaluate);
    when it is longer than re-evaluating the history on r1 (its system prompt copied
    into r1's empty slot), the turn goes to r1."""
    history = SYS_A + "u1: owls? " + "an answer about owls. " * 40
    for long_blocks, expected in ((8, "r0"), (60, "r1")):
        t = SlotTable()
        _done(t, "r0", 1, "h", history, "s1")
        _done(t, "r1", 0, "o", SYS_A + "u1: tea? a long answer. " * 4, "s2")
        t.pin("r0", 0, "cold", _h("X" * BLOCK * long_blocks), max_tokens=64, owner="s3", hit=0)
        views = [_view("r0", busy=1), _view("r1")]
        turn = _h(history + "u2: and why?")
        got = choose_slot(views, CFG, t, turn, affinity="r0", session="s1")
        assert got is not None and got.replica_id == expected, long_blocks
        if expected == "r0":
            assert (got.slot, got.pin, got.fill) == (1, True, False)
        else:
            assert got.fill and got.source == 0
