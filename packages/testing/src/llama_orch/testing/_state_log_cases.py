"""The state-store conformance cases of the event log, waiting tasks and leases
(ORCH-2514), and the helpers every case uses; :class:`~.state_store.StateStoreConformance`
inherits the cases, which use its ``store`` and ``sut`` fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from llama_orch.core.api import ErrorEvent, QueuedEvent, TokenEvent
from llama_orch.core.config import FullPolicy, Priority
from llama_orch.core.errors import ErrorCode
from llama_orch.core.state_store import (
    Canceled,
    Control,
    Dispatched,
    Event,
    Fenced,
    PoolPolicy,
    SlotView,
    StateStore,
    StoreConfig,
    TaskEnded,
    TaskSpec,
    continuation,
)

__all__ = ["EventLogAndLeaseCases", "StoreUnderTest"]

LEASE_MS = 200


@dataclass
class StoreUnderTest:
    """``open()``: a started store on a fresh, empty namespace; ``peer(store)``: another
    client on the same namespace (the same object for in-process stores);
    ``advance(s)``: let ``s`` seconds pass on the store's clock."""

    backend: str
    open: Callable[[], Awaitable[StateStore]]
    peer: Callable[[StateStore], Awaitable[StateStore]]
    advance: Callable[[float], Awaitable[None]]


def _spec(tid: str, prio: Priority = "batch", tenant: str = "default", **kw: Any) -> TaskSpec:
    return TaskSpec(task_id=tid, pool="p", priority=prio, tenant=tenant, **kw)


def _cfg(capacity: int = 1000, policy: FullPolicy = "reject", **kw: Any) -> StoreConfig:
    pools = {"p": PoolPolicy(capacity=capacity, full_policy=policy)}
    return StoreConfig(pools=pools, **kw)


def _slots(n: int = 1000, **sets: int) -> list[SlotView]:
    if sets:
        return [
            SlotView(replica_id=r, set_key=r.split("-")[0], ready=True, slots=s)
            for r, s in sets.items()
        ]
    return [SlotView(replica_id="r1", set_key="A", ready=True, slots=n)]


async def _running(
    store: StateStore,
    *tasks: str | TaskSpec,
    slots: int = 1000,
    instance: str = "i1",
    lease_ms: int = 60_000,
) -> Dispatched:
    """The setup most cases share: the default rules, one replica of ``slots`` slots,
    ``tasks`` submitted in order, and the first dispatched to ``instance``."""
    await store.configure(_cfg())
    await store.set_replicas("p", _slots(slots))
    for t in tasks:
        await store.submit(_spec(t) if isinstance(t, str) else t)
    d = await store.dispatch("p", instance, lease_ms)
    assert isinstance(d, Dispatched)
    return d


async def _end(store: StateStore, d: Dispatched) -> None:
    await store.append(d.task.task_id, d.epoch, [Event("end", b"{}")])


def _token(t: str, i: int) -> Event:
    return Event("token", msgspec.json.encode(TokenEvent(t, i)))


async def _collect(it: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in it]


class EventLogAndLeaseCases:
    """Cases of the event log, waiting tasks, leases and retention."""

    # ----------------------------------------------------------------- event log
    async def test_append_many_answers_each_batch_on_its_own(self, store: StateStore) -> None:
        """ORCH-2565: several tasks' batches in one call: each is fenced, ended or
        logged as one ``append`` would be, and a refused one changes nothing else."""
        await store.configure(_cfg())
        await store.set_replicas("p", _slots())
        for tid in ("a", "b", "c"):
            await store.submit(_spec(tid))
        da, db, dc = [await store.dispatch("p", "i1", 60_000) for _ in range(3)]
        assert isinstance(da, Dispatched) and isinstance(db, Dispatched)
        assert isinstance(dc, Dispatched)
        await _end(store, dc)
        got = await store.append_many(
            [
                ("a", da.epoch, [Event("started", b"{}"), _token("x", 0)]),
                ("b", db.epoch + 99, [_token("stale", 0)]),
                ("c", dc.epoch, [_token("late", 0)]),
                ("zz", 1, [_token("nobody", 0)]),
                ("b", db.epoch, [Event("started", b"{}"), Event("end", b"{}")]),
                ("a", da.epoch, [_token("y", 1)]),
            ]
        )
        assert got[0] == 2 and got[4] == 2 and got[5] == 3
        assert isinstance(got[1], Fenced) and isinstance(got[2], TaskEnded)
        assert isinstance(got[3], KeyError)
        assert [e.kind for e in await store.read("a")] == ["started", "token", "token"]
        assert [e.kind for e in await store.read("b")] == ["started", "end"]
        assert [e.kind for e in await store.read("c")] == ["end"]

    async def test_exactly_one_terminal_and_resume(self, store: StateStore) -> None:
        """ORCH-2508: contiguous ids, one terminal, read after an id, tail to the end."""
        d = await _running(store, "t")
        nxt = await store.append("t", d.epoch, [Event("started", b"{}"), Event("token", b"a")])
        assert nxt == 2
        tail = asyncio.create_task(_collect(store.tail("t", 0)))
        await store.append("t", d.epoch, [Event("token", b"b")])
        await store.append("t", d.epoch, [Event("token", b"c"), Event("end", b"{}")])
        with pytest.raises(TaskEnded):
            await store.append("t", d.epoch, [Event("end", b"{}")])
        assert await store.cancel("t") == "ended"
        log = await store.read("t")
        assert [e.seq for e in log] == [0, 1, 2, 3, 4]
        assert [e.kind for e in log].count("end") == 1 and log[-1].kind == "end"
        assert [e.seq for e in await store.read("t", after=2)] == [3, 4]
        async with asyncio.timeout(30):  # ORCH-2817
            got = await tail
        assert [e.seq for e in got] == [1, 2, 3, 4]
        assert await store.busy("p") == {}

    async def test_no_token_after_cancel(self, store: StateStore, sut: StoreUnderTest) -> None:
        """ORCH-2510: cancel on another client ends the task atomically; the owner's
        next token is refused and the slot is free."""
        d = await _running(store, "t", "q", slots=1, instance="owner")
        await store.append("t", d.epoch, [Event("started", b"{}"), Event("token", b"a")])
        other = await sut.peer(store)
        try:
            assert await other.cancel("t") == "running"
            assert await other.cancel("q") == "queued"
        finally:
            if other is not store:
                await other.close()
        with pytest.raises(Canceled):
            await store.append("t", d.epoch, [Event("token", b"b")])
        log = await store.read("t")
        assert [e.kind for e in log] == ["started", "token", "end"]
        assert msgspec.json.decode(log[-1].data)["reason"] == "canceled"
        # the end counts the tokens streamed before it (found by the chaos store profile,
        # ORCH-6113: it said 0 after 21 tokens)
        assert msgspec.json.decode(log[-1].data)["tokens_out"] == 1
        assert [e.kind for e in await store.read("q")] == ["end"]
        assert await store.busy("p") == {}
        assert await store.dispatch("p", "owner", 60_000) is None

    async def test_cancel_reaches_the_owner_on_its_control_channel(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2540: a cancel on another client of a running task puts one
        ``Control("cancel", id)`` on the owner's channel in the same step, waking a
        waiting owner; a queued task's cancel and other instances' channels get none."""
        cur = await store.control_cursor("owner")
        quiet = await store.control_cursor("bystander")
        await _running(store, "t", "q", slots=1, instance="owner")
        waiter = asyncio.create_task(store.wait_control("owner", cur, 30))
        await asyncio.sleep(0)  # let it block
        other = await sut.peer(store)
        try:
            assert await other.cancel("q") == "queued"
            assert await other.cancel("t") == "running"
            assert await other.cancel("t") == "ended"  # a second cancel sends nothing
        finally:
            if other is not store:
                await other.close()
        async with asyncio.timeout(30):  # ORCH-2817
            cur2, got = await waiter
        assert got == [Control("cancel", "t")] and cur2 != cur
        assert await store.wait_control("owner", cur2, 0.2) == (cur2, [])
        assert await store.wait_control("bystander", quiet, 0.2) == (quiet, [])

    async def test_heartbeats_list_the_live_instances(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2543: an instance is listed while its heartbeat's ttl runs, then not."""
        await store.configure(_cfg())
        await store.heartbeat("i-b", 60_000)
        await store.heartbeat("i-a", LEASE_MS)
        live = await store.instances()
        assert [v.instance_id for v in live] == ["i-a", "i-b"]
        assert 0 < live[0].expires_in_ms <= LEASE_MS < live[1].expires_in_ms <= 60_000
        await sut.advance(LEASE_MS / 1000 + 0.2)
        assert [v.instance_id for v in await store.instances()] == ["i-b"]
        await store.heartbeat("i-b", 0)  # a shutdown leaves the list at once
        assert await store.instances() == []

    # ----------------------------------------------------------------- waiting tasks
    async def test_queued_events_positions_and_bounded_waits(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2560, ORCH-2561, ORCH-2562: any client learns a queued task's exact
        position; `queued` events are appended without an epoch, at most one per
        interval whoever announces, never after the dispatch; a bounded wait ends only
        a queued task; a dispatched task with only `queued` events is still requeued
        by the reaper."""
        peer = await sut.peer(store)
        try:
            await store.configure(_cfg())
            await store.set_replicas("p", _slots(1))
            for tid, tenant in (("a", "x"), ("b", "y"), ("c", "y")):
                await store.submit(_spec(tid, tenant=tenant))
            assert await peer.positions(["c", "b", "zz"]) == {"b": 1, "c": 2}
            assert await store.announce_queued([("b", 1000), ("c", 2000)], 300) == {
                "b": 1,
                "c": 2,
            }
            # another instance announcing within the interval writes nothing
            assert await peer.announce_queued([("b", 9000)], 300) == {"b": 1}
            qd = msgspec.json.Decoder(QueuedEvent)
            (ev,) = await store.read("b")
            assert ev.kind == "queued" and qd.decode(ev.data) == QueuedEvent(
                queue_position=1, predicted_start_ms=1000
            )
            await sut.advance(0.35)
            await peer.announce_queued([("b", 1100)], 300)  # unchanged: no event
            assert len(await store.read("b")) == 1
            assert await store.cancel("a") == "queued"
            await peer.announce_queued([("b", 1100)], 300)  # moved up: one event
            assert [qd.decode(e.data).queue_position for e in await store.read("b")] == [1, 0]
            d = await store.dispatch("p", "i1", LEASE_MS)
            assert isinstance(d, Dispatched) and d.task.task_id == "b"
            await sut.advance(0.35)
            assert await store.announce_queued([("b", 0), ("c", 0)], 300) == {"c": 0}
            assert len(await store.read("b")) == 2  # nothing after the dispatch
            # the dispatched task's instance died before its first event: requeued
            await sut.advance(LEASE_MS / 1000 + 0.2)
            reaped = await peer.reap("heir", LEASE_MS)
            assert [(r.task_id, r.outcome) for r in reaped] == [("b", "requeued")]
            assert await store.positions(["b", "c"]) == {"b": 0, "c": 1}
            d = await store.dispatch("p", "i1", 60_000)
            assert isinstance(d, Dispatched) and d.task.task_id == "b"
            expired = Event(
                "error",
                msgspec.json.encode(
                    ErrorEvent(code=ErrorCode.ADMISSION_REJECT, message="ttl", retriable=True)
                ),
            )
            assert not await peer.expire("b", expired)  # running: untouched
            assert await peer.expire("c", expired)
            assert not await store.expire("c", expired)  # one terminal only
            assert [e.kind for e in await store.read("c")][-1] == "error"
            assert await store.positions(["c"]) == {}
            view = await store.task("b")
            assert view is not None and view.state == "running"
        finally:
            if peer is not store:
                await peer.close()

    # ----------------------------------------------------------------- leases, fencing
    async def test_lease_expiry_requeues_a_task_without_events(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2511: dispatched, no event, lease expired → front of its queue, slot freed;
        the old owner is fenced."""
        long = await _running(store, "t1", "t2", slots=1, instance="slow")
        assert await store.reap("alive", LEASE_MS) == []  # a live lease is never reaped
        await store.requeue("t1", long.epoch)
        d = await store.dispatch("p", "dead", LEASE_MS)
        assert isinstance(d, Dispatched) and d.task.task_id == "t1"
        await sut.advance(LEASE_MS / 1000 + 0.2)
        reaped = await store.reap("alive", LEASE_MS)
        assert [(r.task_id, r.outcome) for r in reaped] == [("t1", "requeued")]
        assert await store.busy("p") == {}
        with pytest.raises(Fenced):
            await store.append("t1", d.epoch, [Event("started", b"{}")])
        assert await store.renew("dead", {"t1": d.epoch}, LEASE_MS) == ["t1"]
        again = await store.dispatch("p", "alive", 60_000)
        assert isinstance(again, Dispatched) and again.task.task_id == "t1"
        assert again.requeues == 2 and again.epoch > d.epoch

    async def test_lease_expiry_mid_stream_is_claimed_for_continuation(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2511, ORCH-2509: a streaming task is handed to the reaper under a new
        epoch with its log so far; the stale owner can never append again."""
        d = await _running(
            store, _spec("t", request=b"prompt"), slots=1, instance="zombie", lease_ms=LEASE_MS
        )
        started = [Event("started", b"{}"), _token("Hel", 0), _token("lo", 1)]
        await store.append("t", d.epoch, started)
        assert await store.renew("zombie", {"t": d.epoch}, LEASE_MS) == []
        await sut.advance(LEASE_MS / 1000 + 0.2)
        (r,) = await store.reap("heir", LEASE_MS)
        assert (r.outcome, r.next_seq, r.task.request) == ("claimed", 3, b"prompt")
        assert r.replica_id == "r1" and r.epoch > d.epoch
        assert continuation(await store.read("t")) == ("Hello", 2, True, False)
        with pytest.raises(Fenced):
            await store.append("t", d.epoch, [_token("zombie", 2)])
        assert await store.append("t", r.epoch, [_token("!", 2), Event("end", b"{}")]) == 5
        assert continuation(await store.read("t")) == ("Hello!", 3, True, True)
        assert await store.busy("p") == {}
        view = await store.task("t")
        assert view is not None and view.state == "ended" and view.owner == "heir"

    async def test_requeue_gives_the_task_back_in_front(self, store: StateStore) -> None:
        """ORCH-2511 (ORCH-1908): the owner puts a task back ahead of its flow; fenced after."""
        d = await _running(store, "t1", "t2", slots=1)
        await store.requeue("t1", d.epoch)
        with pytest.raises(Fenced):
            await store.requeue("t1", d.epoch)
        d2 = await store.dispatch("p", "i1", 60_000)
        assert isinstance(d2, Dispatched) and d2.task.task_id == "t1"

    async def test_ended_task_is_forgotten_after_retention(
        self, store: StateStore, sut: StoreUnderTest
    ) -> None:
        """ORCH-2517: the log and the record expire after the retention window."""
        await store.configure(_cfg(event_log_retention_ms=200))
        await store.submit(_spec("t"))
        await store.cancel("t")
        assert await store.task("t") is not None
        await sut.advance(0.5)
        await store.submit(_spec("u"))  # any operation lets the memory store purge
        assert await store.task("t") is None
        with pytest.raises(KeyError):
            await store.read("t")
