"""ORCH-2301..2315: the prefix index and the placement policies inside a replica set."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from llama_orch.core.placement import ReplicaView, place
from llama_orch.core.placement_policy import PlacementConfig, choose_in_set
from llama_orch.core.prefix_index import PrefixIndex, block_hashes
from llama_orch.core.replica import ReplicaSetKey

KEY = ReplicaSetKey("mock", "d", 2048, "v1")
SYSTEM = "You are a careful assistant. " * 40


def _view(rid: str, slots: int = 4, busy: int = 0, load: int = 0) -> ReplicaView:
    return ReplicaView(rid, KEY, True, slots, busy, load)


# ---------------------------------------------------------------- the index


def test_block_hashes_name_shared_prefixes_only():
    """ORCH-2301: block i is shared exactly when the first (i+1) blocks are."""
    a = block_hashes(SYSTEM + "user: tell me about cats", 64)
    b = block_hashes(SYSTEM + "user: tell me about dogs", 64)
    c = block_hashes("X" + SYSTEM, 64)
    shared = len(SYSTEM) // 64
    assert a[:shared] == b[:shared]
    assert not set(a) & set(c)  # one different first character: nothing shared
    assert block_hashes("short", 64) == []  # a partial block is not hashed
    with pytest.raises(ValueError):
        block_hashes("x", 0)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300), st.integers(1, 40))
def test_shared_blocks_equal_the_common_prefix(a: str, b: str, size: int) -> None:
    """ORCH-2301, property: matching blocks = whole blocks of the common prefix."""
    ha, hb = block_hashes(a, size), block_hashes(b, size)
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    matched = 0
    while matched < min(len(ha), len(hb)) and ha[matched] == hb[matched]:
        matched += 1
    assert matched == min(common // size, len(ha), len(hb))


def test_match_counts_leading_blocks_and_lru_evicts_by_capacity():
    """ORCH-2302, ORCH-2303: the expected hit is the leading blocks a replica holds;
    a replica keeps at most its cache's worth of blocks, least recently sent first out."""
    index = PrefixIndex(block_chars=64, chars_per_token=4.0)
    prompt = SYSTEM + "user: hello"
    hashes = index.hashes(prompt)
    assert index.capacity_blocks(2048) == 128
    index.record("r0", hashes, capacity_blocks=1000)
    assert index.match("r0", hashes) == len(hashes)
    assert index.match("r1", hashes) == 0
    other = index.hashes(SYSTEM + "user: a different question entirely, much longer" * 3)
    assert index.match("r0", other) == len(SYSTEM) // 64
    assert index.tokens(index.match("r0", hashes)) == len(hashes) * 16
    # capacity: the tail of the old prompt goes first; the shared system prompt,
    # touched again by the newer prompt, stays
    unrelated = index.hashes("Z" * 64 * 10)
    index.record("r0", unrelated, capacity_blocks=len(hashes) + 5)
    assert index.size("r0") == len(hashes) + 5
    assert index.match("r0", unrelated) == 10
    assert index.match("r0", hashes) < len(hashes)


def test_a_restarted_replica_forgets_its_blocks():
    """ORCH-2304: a new engine instance (pid, address or restart count) starts cold."""
    index = PrefixIndex(block_chars=64)
    hashes = index.hashes(SYSTEM)
    index.observe_epoch("r0", ("http://a", 1, 0))
    index.record("r0", hashes, 1000)
    index.observe_epoch("r0", ("http://a", 1, 0))
    assert index.match("r0", hashes) == len(hashes)
    index.observe_epoch("r0", ("http://b", 2, 1))
    assert index.match("r0", hashes) == 0
    index.record("r0", hashes, 1000)
    index.forget("r0")
    assert index.replicas() == []


class IndexMachine(RuleBasedStateMachine):
    """ORCH-2302, ORCH-2303 as a state machine against a model of LRU sets."""

    def __init__(self) -> None:
        super().__init__()
        self.index = PrefixIndex(block_chars=16)
        self.model: dict[str, list[bytes]] = {}
        self.chains: list[tuple[str, list[bytes]]] = []
        self.cap = 6  # below one long record: eviction within a prompt is exercised

    @rule(
        rid=st.sampled_from(["a", "b"]),
        prefix=st.integers(0, 3),
        # up to 8 whole blocks of 3 kinds: tails share prefixes, and one record may
        # alone pass the capacity
        tail=st.lists(st.sampled_from(["a" * 16, "b" * 16, "ab" * 8]), max_size=8),
        extra=st.text(max_size=20),
    )
    def record(self, rid: str, prefix: int, tail: list[str], extra: str) -> None:
        hashes = self.index.hashes("p" * 16 * prefix + "".join(tail) + extra)
        self.index.record(rid, hashes, self.cap)
        lru = self.model.setdefault(rid, [])
        self.chains.append((rid, hashes))
        for h in reversed(hashes):  # ORCH-2362: the last block first, block 0 most recent
            if h in lru:
                lru.remove(h)
            lru.append(h)
        del lru[: max(0, len(lru) - self.cap)]

    @rule(rid=st.sampled_from(["a", "b"]), prompt=st.text(max_size=80))
    def match(self, rid: str, prompt: str) -> None:
        hashes = self.index.hashes(prompt)
        expected = 0
        for h in hashes:
            if h not in self.model.get(rid, []):
                break
            expected += 1
        assert self.index.match(rid, hashes) == expected

    @invariant()
    def bounded(self) -> None:
        for rid in ("a", "b"):
            assert self.index.size(rid) == len(self.model.get(rid, [])) <= self.cap

    @invariant()
    def held_blocks_of_a_prompt_are_its_prefix(self) -> None:
        """ORCH-2362: a replica never holds block i+1 of a recorded prompt without
        block i: every block it holds of a prompt is reachable by match."""
        for rid, hashes in self.chains:
            assert self.index.held(rid, hashes) == self.index.match(rid, hashes)


def test_eviction_takes_a_prompt_from_its_tail():
    """ORCH-2362: over capacity, an older session keeps the start of its history (the
    system prompt and its first turns), so it still matches a prefix; the blocks it
    loses are its last ones. Touching blocks first to last would evict its first
    unique block and make its whole history unmatchable."""
    index = PrefixIndex(block_chars=16)
    system = "s" * 16 * 4
    old = index.hashes(system + "a" * 16 * 6)
    new = index.hashes(system + "b" * 16 * 6)
    index.record("r0", old, capacity_blocks=100)
    index.record("r0", new, capacity_blocks=13)  # 4 shared + 6 new + 3 of old's 6
    assert index.match("r0", new) == 10
    assert index.match("r0", old) == 7


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# ---------------------------------------------------------------- the policies


def test_least_loaded_is_the_builtin_rule():
    """ORCH-2310: least-loaded keeps ORCH-1907 (free slots, session, work, id)."""
    cfg = PlacementConfig(policy="least-loaded")
    views = [_view("r1", busy=1), _view("r0", busy=1, load=5), _view("r2", busy=2)]
    assert choose_in_set(views, cfg) == (views[0], "load")
    assert choose_in_set(views, cfg, affinity="r0") == (views[1], "load")
    assert choose_in_set([_view("r0", slots=1, busy=1)], cfg) is None


def test_round_robin_rotates_and_skips_full_replicas():
    """ORCH-2311: the next replica after the last one, by id, wrapping, skipping full."""
    cfg = PlacementConfig(policy="round-robin")
    views = [_view("r0"), _view("r1"), _view("r2", slots=1, busy=1)]
    last = None
    picked = []
    for _ in range(4):
        choice = choose_in_set(views, cfg, last=last)
        assert choice is not None and choice[1] == "rotate"
        last = choice[0].replica_id
        picked.append(last)
    assert picked == ["r0", "r1", "r0", "r1"]


def test_prefix_aware_prefers_the_longest_hit_within_the_guard():
    """ORCH-2312: longest expected hit wins; no hit → least-loaded; the guard
    overrides a hit when the warm replica runs too many more tasks."""
    cfg = PlacementConfig(policy="prefix-aware", imbalance_abs=2, imbalance_rel=1.5)
    views = [_view("r0", busy=1), _view("r1", busy=2)]
    assert choose_in_set(views, cfg, hits={"r0": 0, "r1": 0}) == (views[0], "load")
    assert choose_in_set(views, cfg, hits={"r0": 3, "r1": 9}) == (views[1], "prefix")
    assert choose_in_set(views, cfg, hits={"r0": 9, "r1": 9}) == (views[0], "prefix")
    # equal hits: the session's previous replica first, even if busier
    assert choose_in_set(views, cfg, hits={"r0": 9, "r1": 9}, affinity="r1") == (
        views[1],
        "prefix",
    )
    loaded = [_view("r0", slots=8, busy=0), _view("r1", slots=8, busy=3)]
    assert choose_in_set(loaded, cfg, hits={"r1": 5}) == (loaded[0], "guard")
    # 3 vs 1 busy: difference 2 is within imbalance_abs
    near = [_view("r0", slots=8, busy=1), _view("r1", slots=8, busy=3)]
    assert choose_in_set(near, cfg, hits={"r1": 5}) == (near[1], "prefix")


@settings(max_examples=200, deadline=None)
@given(
    busy=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    hits=st.lists(st.integers(0, 20), min_size=5, max_size=5),
    policy=st.sampled_from(["least-loaded", "prefix-aware", "round-robin"]),
    abs_=st.integers(0, 4),
)
def test_every_policy_picks_a_free_replica(busy, hits, policy, abs_):
    """ORCH-2313, property: whatever the policy, the pick has a free slot, and
    prefix-aware never places where the guard says the imbalance is too high."""
    cfg = PlacementConfig(policy=policy, imbalance_abs=abs_)
    views = [_view(f"r{i}", slots=6, busy=b) for i, b in enumerate(busy)]
    hit_map = {v.replica_id: hits[i] for i, v in enumerate(views)}
    choice = choose_in_set(views, cfg, hits=hit_map, last="r1")
    if all(v.free == 0 for v in views):
        assert choice is None
        return
    assert choice is not None
    picked, decision = choice
    assert picked.free > 0
    if decision == "prefix":
        coolest = min(v.busy for v in views if v.free > 0)
        diff = picked.busy - coolest
        assert diff <= abs_ or picked.busy <= cfg.imbalance_rel * coolest
        assert hit_map[picked.replica_id] == max(hit_map[v.replica_id] for v in views if v.free)


def test_place_uses_the_chooser_inside_the_chosen_set():
    """ORCH-2310: place() hands the chosen set's replicas to the pool's policy."""
    views = [_view("r0"), _view("r1")]
    seen: list[list[str]] = []

    def choose(vs: list[ReplicaView]) -> ReplicaView | None:
        seen.append([v.replica_id for v in vs])
        return vs[-1]

    assert place(views, None, None, choose) == views[1]
    assert seen == [["r0", "r1"]]
    full = [_view("r0", slots=1, busy=1)]
    assert place(full, None, None, choose) is None and len(seen) == 1
