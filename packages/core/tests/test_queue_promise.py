"""A queue that keeps the starts it told (ORCH-2972..2974): start-bys merge a flow's EDF
and arrival orders; without them the order is ORCH-1111's; ``pop``, the iteration and
``position`` agree."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from llama_orch.core.queue import AdmissionQueue


def _reference(pushed: list[tuple[int, float | None, float]], live: set[int]) -> list[int]:
    """One flow's serving order written from ORCH-2972's text: the deadline tasks by
    (deadline, arrival), the others by arrival, merged: the deadline head first while
    the earliest start-by of the deadline tasks left is not later than the other head's."""
    edf = sorted(
        ((d, n, by) for n, d, by in pushed if d is not None and n in live), key=lambda x: x[:2]
    )
    fifo = [(n, by) for n, d, by in pushed if d is None and n in live]
    out: list[int] = []
    i = j = 0
    while i < len(edf) or j < len(fifo):
        if i < len(edf) and (j == len(fifo) or min(x[2] for x in edf[i:]) <= fifo[j][1]):
            out.append(edf[i][1])
            i += 1
        else:
            out.append(fifo[j][0])
            j += 1
    return out


def test_off_the_order_is_orch_1111s() -> None:
    """ORCH-2974: no start-by given: every deadline task before every other, EDF."""
    q: AdmissionQueue[str] = AdmissionQueue(10)
    assert q.keep_told_start is None
    q.push("f1", "batch")
    q.push("d9", "batch", deadline=9.0)
    q.push("f2", "batch")
    q.push("d5", "batch", deadline=5.0)
    assert list(q) == ["d5", "d9", "f1", "f2"]
    assert [q.position(x) for x in ["d5", "d9", "f1", "f2"]] == [0, 1, 2, 3]


def test_a_deadline_task_with_slack_is_served_after_the_task_it_would_pass() -> None:
    """ORCH-2972: f (told to start by 10) is not passed by d2 (start-by 12) alone; d1
    (start-by 4, a later deadline) cannot wait: it goes before f, and d2 ahead of it (EDF)."""
    q: AdmissionQueue[str] = AdmissionQueue(10)
    q.push("f", "batch")
    q.promise("f", 10.0)
    q.push("d2", "batch", deadline=20.0)
    assert list(q) == ["d2", "f"]  # not yet promised: EDF's place, where its 202 is told
    q.promise("d2", 12.0)
    assert list(q) == ["f", "d2"] and q.position("d2") == 1
    q.push("d1", "batch", deadline=30.0)
    q.promise("d1", 4.0)  # a later deadline than d2's, an earlier start-by than f's
    assert list(q) == ["d2", "d1", "f"]
    assert [q.pop(), q.pop(), q.pop()] == ["d2", "d1", "f"]


def test_a_tie_goes_to_the_deadline_task() -> None:
    q: AdmissionQueue[str] = AdmissionQueue(10)
    q.push("f", "batch")
    q.promise("f", 10.0)
    q.push("d", "batch", deadline=20.0)
    q.promise("d", 10.0)
    assert q.peek() == "d"


def test_a_start_by_is_raised_by_the_queued_tasks_ahead_only() -> None:
    """ORCH-2972: a task already served, or put back in front with no start-by, does not
    raise a later task's start-by."""
    q: AdmissionQueue[str] = AdmissionQueue(10)
    q.push("f1", "batch", tenant="t")
    q.push("f0", "batch", tenant="t")
    q.promise("f1", 10.0)
    assert q.pop() == "f1"  # f0 stays: the flow stays
    q.promise("f0", 2.0)  # f1 served: not raised
    q.push("p", "batch", tenant="t", front=True)
    q.push("f2", "batch", tenant="t")
    q.promise("f2", 1.0)  # raised by f0 (queued ahead), not by p (no start-by)
    q.push("d", "batch", tenant="t", deadline=50.0)
    q.promise("d", 2.5)
    assert list(q) == ["d", "p", "f0", "f2"]  # p unpromised at the head: ORCH-1111's place
    q.remove("p")
    assert list(q) == ["f0", "f2", "d"]  # f2 raised to 2.0 (not 10.0), before d's 2.5
    q.promise("d", 1.5)
    assert list(q) == ["d", "f0", "f2"]


def test_start_bys_without_a_deadline_keep_arrival_order() -> None:
    """ORCH-2972: a later task without a deadline told an earlier start-by gets the one
    before it, so a deadline task never passes it and not the one ahead."""
    q: AdmissionQueue[str] = AdmissionQueue(10)
    q.push("f1", "batch")
    q.promise("f1", 10.0)
    q.push("f2", "batch")
    q.promise("f2", 3.0)  # raised to 10
    q.push("d", "batch", deadline=50.0)
    q.promise("d", 6.0)  # before both: passes both, never f2 alone
    assert list(q) == ["d", "f1", "f2"]
    q.promise("d", 10.5)
    assert list(q) == ["f1", "f2", "d"]


def test_tasks_put_back_in_front_have_no_start_by() -> None:
    """ORCH-2973: a preempted task put back (ORCH-1908) keeps ORCH-1111's place."""
    q: AdmissionQueue[str] = AdmissionQueue(10)
    q.push("f", "batch")
    q.promise("f", 10.0)
    q.push("d", "batch", deadline=50.0)
    q.promise("d", 20.0)
    q.push("p", "batch", front=True)
    assert list(q) == ["d", "p", "f"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["push", "push", "promise", "pop", "remove"]),
            st.one_of(st.none(), st.floats(0, 10)),
            st.floats(0, 10),
            st.integers(0, 1000),
        ),
        max_size=50,
    ),
    st.booleans(),
)
def test_one_flows_order_is_the_merge_of_its_start_bys(ops, promise_on_push: bool) -> None:
    """ORCH-2974 (Hypothesis): with pushes, start-bys (also given again), pops and
    removals in one flow, the iteration is the reference merge, ``position`` counts it
    and ``pop`` serves it."""
    q: AdmissionQueue[int] = AdmissionQueue(1000)
    pushed: dict[int, tuple[float | None, float]] = {}
    for op, deadline, by, pick in ops:
        if op == "push":
            n = len(pushed)
            q.push(n, "batch", deadline=deadline)
            pushed[n] = (deadline, -math.inf if deadline is not None else math.inf)
            if promise_on_push:
                op, pick = "promise", n
        if op == "promise" and len(q):
            item = pick if pick in q else sorted(q.queued())[pick % len(q)]
            d = pushed[item][0]
            q.promise(item, by)
            if d is None:  # the nearest promised task without a deadline queued ahead
                ahead = [
                    pushed[n][1]
                    for n in range(item)
                    if n in q and pushed[n][0] is None and pushed[n][1] != math.inf
                ]
                by = max(by, ahead[-1]) if ahead else by
            pushed[item] = (d, by)
        elif op == "pop" and len(q):
            q.pop()
        elif op == "remove" and len(q):
            q.remove(sorted(q.queued())[pick % len(q)])
        live = set(q.queued())
        want = _reference([(n, d, b) for n, (d, b) in pushed.items()], live)
        assert list(q) == want
        assert [q.position(x) for x in want] == list(range(len(want)))
    order = list(q)
    assert [q.pop() for _ in order] == order


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["push", "push", "front", "promise", "pop", "remove"]),
            st.sampled_from(["interactive", "batch"]),
            st.sampled_from(["a", "b"]),
            st.one_of(st.none(), st.floats(0, 10)),
            st.floats(0, 10),
            st.integers(0, 1000),
        ),
        max_size=60,
    ),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(1, 3)),
)
def test_position_and_pop_follow_the_start_bys_across_flows(ops, tenant_weights) -> None:
    """ORCH-2973, ORCH-2974 (Hypothesis): with several priorities and tenants (WRR and
    DRR unchanged), tasks put back in front, start-bys and removals, ``position`` is
    each task's place in the iteration and ``pop`` serves that order."""
    q: AdmissionQueue[int] = AdmissionQueue(1000, tenant_weights=tenant_weights)
    n = 0
    for op, prio, tenant, deadline, by, pick in ops:
        if op in ("push", "front"):
            q.push(n, prio, tenant=tenant, deadline=deadline, front=op == "front")
            n += 1
        elif op == "promise" and len(q):
            q.promise(sorted(q.queued())[pick % len(q)], by)
        elif op == "pop":
            q.pop()
        elif len(q):
            q.remove(sorted(q.queued())[pick % len(q)])
        order = list(q)
        assert [q.position(x) for x in order] == list(range(len(order)))
    order = list(q)
    assert [q.pop() for _ in order] == order
