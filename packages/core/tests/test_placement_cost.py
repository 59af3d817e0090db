"""ORCH-2780: the replica-set choice asks for the key tie-break only among tied sets.

The choice itself is the one of ORCH-1116/1303/1907 (most free slots, then the
preferred set, then the least assigned work, then the lowest key); the property
test compares it with the formula it replaced.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from llama_orch.core import placement
from llama_orch.core.placement import ReplicaView, _neg, _set_free, choose_set
from llama_orch.core.replica import ReplicaSetKey


def _choose_set_before(
    replicas: Iterable[ReplicaView[Hashable]], prefer: Hashable | None
) -> Hashable | None:
    # the formula before ORCH-2780: one max() with the key tie-break for every set
    free = _set_free(replicas)
    if not free:
        return None
    return max(free, key=lambda k: (free[k][0], k == prefer, free[k][1], _neg(k)))


# keys whose reprs are prefixes of each other, equal up to a late character, or alike
_KEYS = [
    "a",
    "ab",
    "abc",
    "b",
    "ba",
    ("a", 1),
    ("a", 10),
    ReplicaSetKey("mock", "d", 2048, "v1"),
    ReplicaSetKey("mock", "d", 2048, "v2"),
    ReplicaSetKey("mock", "d" * 64, 4096, "v1"),
]

_views = st.lists(
    st.builds(
        ReplicaView,
        replica_id=st.sampled_from(["r0", "r1", "r2", "r3"]),
        set_key=st.sampled_from(_KEYS),
        ready=st.booleans(),
        slots=st.integers(0, 4),
        busy=st.integers(0, 4),
        load=st.integers(0, 3),
    ),
    max_size=8,
)


@given(_views, st.one_of(st.none(), st.sampled_from(_KEYS)))
def test_choose_set_is_the_formula_it_replaced(
    views: list[ReplicaView[Hashable]], prefer: Hashable | None
) -> None:
    """ORCH-2780: the same set as max() over (free, prefer, load, lowest key), ties included."""
    assert choose_set(views, prefer) == _choose_set_before(views, prefer)


def test_the_key_tie_break_runs_only_for_tied_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCH-2780: one Ready set, or one set ahead on slots, computes no key tie-break."""
    calls: list[object] = []

    def counting(key: Hashable) -> tuple[int, ...]:
        calls.append(key)
        return _neg(key)

    monkeypatch.setattr(placement, "_neg", counting)
    one = ReplicaSetKey("mock", "d" * 64, 4096, "v1")
    two = ReplicaSetKey("mock", "d" * 64, 4096, "v2")
    assert choose_set([ReplicaView("r0", one, True, 4, 1)]) == one
    assert (
        choose_set([ReplicaView("r0", one, True, 4, 1), ReplicaView("r1", two, True, 4, 0)]) == two
    )
    assert calls == []
    # a real tie still falls to the lowest key
    assert (
        choose_set([ReplicaView("r0", two, True, 4, 0), ReplicaView("r1", one, True, 4, 0)]) == one
    )
    assert len(calls) == 2
