"""The state-store conformance cases of placement on a store (ORCH-2572..2577): what a
dispatch answers for the instance's placement policy, and ``move``.
:class:`~.state_store.StateStoreConformance` inherits them."""

from __future__ import annotations

import pytest
from llama_orch.core.state_store import (
    Canceled,
    Dispatched,
    Fenced,
    PlacementHint,
    SlotView,
    StateStore,
)

from ._state_log_cases import _cfg, _end, _slots, _spec, _token

__all__ = ["PlacementCases"]


async def _dispatched(
    store: StateStore, instance: str = "i1", hint: PlacementHint | None = None
) -> Dispatched:
    d = await store.dispatch("p", instance, 60_000, hint)
    assert isinstance(d, Dispatched), d
    return d


class PlacementCases:
    async def test_dispatch_answers_the_candidates(self, store: StateStore) -> None:
        """ORCH-2573: every Ready replica of the chosen set with its free slots before
        the reservation, by id, and the session's last replica."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(**{"A-2": 1, "A-1": 2, "B-1": 1}))
        await store.submit(_spec("t1"))
        d1 = await _dispatched(store)
        assert (d1.replica_id, d1.candidates, d1.affinity) == (
            "A-1",
            [("A-1", 2), ("A-2", 1)],
            None,
        )
        await store.submit(_spec("s1", session="chat"))
        d2 = await _dispatched(store)
        assert (d2.replica_id, d2.candidates, d2.affinity) == (
            "A-1",
            [("A-1", 1), ("A-2", 1)],
            None,
        )
        await _end(store, d2)
        await store.submit(_spec("s2", session="chat"))  # pinned to A, warm on A-1
        d3 = await _dispatched(store)
        assert (d3.replica_id, d3.candidates, d3.affinity) == (
            "A-1",
            [("A-1", 1), ("A-2", 1)],
            "A-1",
        )
        await store.submit(_spec("b", pin="B"))
        d4 = await _dispatched(store)
        assert (d4.replica_id, d4.candidates) == ("B-1", [("B-1", 1)])
        # a replica that is not Ready is no candidate; a full one is, with 0 free
        down = SlotView(replica_id="A-3", set_key="A", ready=False, slots=1)
        await store.set_replicas("p", [*_slots(**{"A-1": 2, "A-2": 1, "B-1": 1}), down])
        await store.submit(_spec("t3"))
        d5 = await _dispatched(store)
        assert (d5.replica_id, d5.candidates) == ("A-2", [("A-1", 0), ("A-2", 1)])

    async def test_move_reserves_another_replica_or_nothing(self, store: StateStore) -> None:
        """ORCH-2574: ``move`` re-reserves on a Ready replica of the task's set with a
        free slot, before its first event, under its epoch; else nothing changes."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(**{"A-1": 1, "A-2": 1, "B-1": 1}))
        await store.submit(_spec("a", session="s"))
        d = await _dispatched(store)
        assert d.replica_id == "A-1"
        tid = d.task.task_id
        assert await store.move(tid, d.epoch, "B-1") is False  # another set
        assert await store.move(tid, d.epoch, "Z-9") is False  # no such replica
        assert await store.busy("p") == {"A-1": 1}
        assert await store.move(tid, d.epoch, "A-2") is True
        assert await store.busy("p") == {"A-2": 1}
        assert await store.session_pin("s") == ("A", "A-2")
        view = await store.task(tid)
        assert view is not None and view.replica_id == "A-2" and view.epoch == d.epoch
        assert await store.move(tid, d.epoch, "A-2") is True  # already there
        await store.submit(_spec("b"))
        db = await _dispatched(store)
        assert db.replica_id == "A-1"
        assert await store.move(tid, d.epoch, "A-1") is False  # full
        assert await store.busy("p") == {"A-1": 1, "A-2": 1}
        with pytest.raises(Fenced):
            await store.move(tid, d.epoch + 1000, "A-1")
        await store.append(tid, d.epoch, [_token("x", 0)])
        await _end(store, db)
        assert await store.move(tid, d.epoch, "A-1") is False  # its run has begun
        assert await store.busy("p") == {"A-2": 1}
        await store.cancel(tid)
        with pytest.raises(Canceled):
            await store.move(tid, d.epoch, "A-1")
        with pytest.raises(KeyError):
            await store.move("nope", 1, "A-1")
        assert await store.busy("p") == {}

    async def test_head_names_what_dispatch_takes_next(self, store: StateStore) -> None:
        """ORCH-2579: the head's priority and pinned set (its pin, else its session's),
        as the next dispatch would take it; None when nothing is queued."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(**{"A-1": 1, "B-1": 1}))
        assert await store.head("p") is None
        await store.submit(_spec("s1", session="chat"))
        d = await _dispatched(store)
        await _end(store, d)
        await store.set_replicas("p", _slots(**{"A-1": 0, "B-1": 0}))
        await store.submit(_spec("b1"))
        assert await store.head("p") == ("batch", None)
        await store.submit(_spec("i1", prio="interactive", pin="A"))
        assert await store.head("p") == ("interactive", "A")
        await store.cancel("i1")
        await store.cancel("b1")
        await store.submit(_spec("s2", session="chat"))
        assert await store.head("p") == ("batch", d.set_key)

    async def test_a_requeue_after_events_pins_the_task_to_its_set(self, store: StateStore) -> None:
        """ORCH-2580 (ORCH-1902): a task given back after it streamed is pinned to the
        replica set it ran on (its continuation needs the same model); one given back
        before any event is not."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(**{"A-1": 1, "B-1": 1}))
        await store.submit(_spec("t"))
        await store.submit(_spec("u"))
        d, du = await _dispatched(store), await _dispatched(store)
        await store.append("t", d.epoch, [_token("x", 0)])
        await store.requeue("u", du.epoch)
        await store.requeue("t", d.epoch)  # the front of the queue: t, then u
        view, uview = await store.task("t"), await store.task("u")
        assert view is not None and view.task.pin == d.set_key
        assert uview is not None and uview.task.pin is None
        again = await _dispatched(store)
        assert again.task.task_id == "t" and again.set_key == d.set_key

    async def test_a_hint_places_as_the_instances_policy(self, store: StateStore) -> None:
        """ORCH-2578: with the instance's hint the store's pick is its policy's: least
        work on a tie of free slots (replica and set), round-robin after its last pick."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots(**{"A-1": 2, "A-2": 2}))
        for tid in ("t1", "t2", "t3", "t4"):
            await store.submit(_spec(tid))
        rr = PlacementHint(round_robin=True, rotate_after="A-1")
        assert (await _dispatched(store, hint=rr)).replica_id == "A-2"  # alone: A-1
        ll = PlacementHint(loads={"A-1": 5})
        assert (await _dispatched(store, hint=ll)).replica_id == "A-1"  # more free slots
        ll = PlacementHint(loads={"A-1": 100, "A-2": 5})
        assert (await _dispatched(store, hint=ll)).replica_id == "A-2"  # a tie: less work
        rr = PlacementHint(round_robin=True, rotate_after="A-2")
        assert (await _dispatched(store, hint=rr)).replica_id == "A-1"  # wraps around
        # the set: a tie of free slots goes to the set with less work (core.choose_set)
        await store.set_replicas("p", _slots(**{"A-1": 3, "A-2": 2, "B-1": 1}))
        ll = PlacementHint(loads={"A-1": 40, "B-1": 0})
        _, d = await store.submit_dispatch(_spec("t5"), "i1", 60_000, ll)
        assert isinstance(d, Dispatched) and d.replica_id == "B-1"  # alone: A-1
