"""ORCH-1101..1106: queue semantics, full policies and their invariants (Hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from llama_orch.core.errors import AdmissionRejected, ErrorCode
from llama_orch.core.queue import AdmissionQueue, DrainRate


def test_fifo_within_priority_and_weighted_between():
    q: AdmissionQueue[str] = AdmissionQueue(100, weights={"interactive": 2, "batch": 1})
    for n in range(4):
        q.push(f"i{n}", "interactive")
        q.push(f"b{n}", "batch")
    order = [q.pop() for _ in range(8)]
    assert order == ["i0", "i1", "b0", "i2", "i3", "b1", "b2", "b3"]
    assert q.pop() is None


def test_reject_policy_refuses_newcomer():
    q: AdmissionQueue[str] = AdmissionQueue(2)
    q.push("a", "batch")
    q.push("b", "batch")
    with pytest.raises(AdmissionRejected) as info:
        q.push("c", "interactive")
    assert info.value.policy_label == "reject"
    assert list(q) == ["a", "b"]


def test_drop_lru_displaces_oldest_not_outranking():
    q: AdmissionQueue[str] = AdmissionQueue(2, "drop-lru")
    q.push("i-old", "interactive")
    q.push("b-old", "batch")
    displaced = q.push("b-new", "batch")
    assert [(d.item, d.code) for d in displaced] == [("b-old", ErrorCode.QUEUE_FULL_DROP_LRU)]
    displaced = q.push("i-new", "interactive")
    assert [d.item for d in displaced] == ["i-old"]
    q2: AdmissionQueue[str] = AdmissionQueue(1, "drop-lru")
    q2.push("i", "interactive")
    with pytest.raises(AdmissionRejected):
        q2.push("b", "batch")  # every queued task outranks the newcomer


def test_shed_low_priority_displaces_newest_lower():
    q: AdmissionQueue[str] = AdmissionQueue(3, "shed-low-priority")
    q.push("b1", "batch")
    q.push("b2", "batch")
    q.push("i1", "interactive")
    displaced = q.push("i2", "interactive")
    assert [(d.item, d.code) for d in displaced] == [("b2", ErrorCode.ADMISSION_REJECT)]
    q.push("i3", "interactive")  # displaces b1
    with pytest.raises(AdmissionRejected):
        q.push("i4", "interactive")  # nothing lower left


def test_position_matches_pop_order():
    q: AdmissionQueue[str] = AdmissionQueue(10)
    for item, prio in [("a", "batch"), ("b", "interactive"), ("c", "batch"), ("d", "interactive")]:
        q.push(item, prio)
    expected = list(q)
    assert [q.position(x) for x in expected] == list(range(4))
    assert [q.pop() for _ in range(4)] == expected


def test_drain_rate_prior_then_measured():
    d = DrainRate(slots=2, prior_ms_per_token=10)
    assert d.predicted_start_ms(ahead=0, running=0, max_tokens=100) == 0
    assert d.predicted_start_ms(ahead=0, running=2, max_tokens=100) == 500
    d.observe(service_ms=2000, tokens=100)
    assert d.predicted_start_ms(ahead=1, running=2, max_tokens=5) == 2000


class QueueMachine(RuleBasedStateMachine):
    """Every pushed item ends exactly once: popped, removed, displaced, or still queued."""

    def __init__(self) -> None:
        super().__init__()
        self.q: AdmissionQueue[int] = AdmissionQueue(3, "drop-lru")
        self.n = 0
        self.live: set[int] = set()
        self.ended: list[int] = []

    @rule(
        prio=st.sampled_from(["interactive", "batch"]),
        policy=st.sampled_from(["reject", "drop-lru", "shed-low-priority"]),
    )
    def push(self, prio: str, policy: str) -> None:
        self.q.policy = policy  # type: ignore[assignment]
        self.n += 1
        try:
            displaced = self.q.push(self.n, prio)
        except AdmissionRejected:
            return
        self.live.add(self.n)
        for d in displaced:
            self.live.remove(d.item)
            self.ended.append(d.item)

    @precondition(lambda self: len(self.live) > 0)
    @rule()
    def pop(self) -> None:
        item = self.q.pop()
        assert item in self.live
        self.live.remove(item)
        self.ended.append(item)

    @precondition(lambda self: len(self.live) > 0)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(sorted(self.live)))
        assert self.q.remove(item)
        self.live.remove(item)
        self.ended.append(item)

    @invariant()
    def bounded_and_consistent(self) -> None:
        assert len(self.q) <= 3
        assert set(self.q) == self.live
        assert len(self.ended) == len(set(self.ended))
        assert not (set(self.ended) & self.live)


TestQueueMachine = QueueMachine.TestCase


def test_position_order_equals_pop_order_after_solo_service():
    """ORCH-1101: the advertised order is the served order, also after a band was served alone."""
    q: AdmissionQueue[str] = AdmissionQueue(50, weights={"interactive": 3, "batch": 1})
    q.push("b0", "batch")
    assert q.pop() == "b0"  # served alone: no credit spent
    for n in range(5):
        q.push(f"i{n}", "interactive")
    q.push("b1", "batch")
    q.push("b2", "batch")
    advertised = list(q)
    assert [q.pop() for _ in range(len(advertised))] == advertised
    assert advertised.index("b1") <= 3  # batch waits at most the interactive weight


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["push", "push", "push", "front", "pop", "remove"]),
            st.sampled_from(["interactive", "batch"]),
            st.sampled_from(["a", "b", "c"]),
            st.one_of(st.none(), st.floats(0, 10)),
            st.integers(0, 1000),
        ),
        max_size=60,
    ),
    st.booleans(),
    st.tuples(st.integers(1, 4), st.integers(1, 3)),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 3)),
)
def test_position_of_every_task_is_its_place_in_serving_order(
    ops, one_flow: bool, band_weights, tenant_weights
):
    """ORCH-1101, ORCH-1110, ORCH-2954: ``position`` (computed per flow and band, not simulated)
    equals the place in the order ``pop`` serves, with band and tenant weights,
    deadlines, tasks put back in front and removals anywhere in the queue."""
    q: AdmissionQueue[int] = AdmissionQueue(
        1000,
        weights={"interactive": band_weights[0], "batch": band_weights[1]},
        tenant_weights=tenant_weights,
    )
    n = 0
    for op, prio, tenant, deadline, pick in ops:
        if op in ("push", "front"):
            if one_flow:
                prio, tenant = "batch", "a"
            q.push(n, prio, tenant=tenant, deadline=deadline, front=op == "front")
            n += 1
        elif op == "pop":
            q.pop()
        elif len(q):
            q.remove(sorted(q.queued())[pick % len(q)])
        order = list(q)
        assert [q.position(x) for x in order] == list(range(len(order)))
    assert q.position(-1) == -1
    order = list(q)
    assert [q.pop() for _ in order] == order  # the advertised order is the served order


def test_tenant_depth_counts_queued_tasks_of_a_tenant_across_priorities() -> None:
    """Used by the admission policy snapshot (ORCH-8521)."""
    from llama_orch.core.queue import AdmissionQueue

    q: AdmissionQueue[int] = AdmissionQueue(10)
    q.push(1, "interactive", tenant="a")
    q.push(2, "batch", tenant="a")
    q.push(3, "batch", tenant="b")
    assert (q.tenant_depth("a"), q.tenant_depth("b"), q.tenant_depth("c")) == (2, 1, 0)
    q.remove(2)
    assert q.tenant_depth("a") == 1
    assert q.pop() == 1 and q.tenant_depth("a") == 0
