"""orchestratord on the state store seam, `memory` backend (ORCH-2520..2527)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from llama_orch.core.config import Config
from llama_orch.core.state_memory import MemoryStateStore
from llama_orch.core.state_store import StoreUnavailable
from llama_orch.orchestratord import stored


def _with_state(config: Config, **state: Any) -> Config:
    doc = msgspec.to_builtins(config)
    doc["state"] = {"backend": "memory", **state}
    return msgspec.convert(doc, Config)


async def test_tasks_run_through_the_store(
    start_orchestrator: Any, mock_config: Any, monkeypatch: Any
) -> None:
    """Admission, dispatch, the event log, SSE resume and cancel go through the store;
    the store's log is what clients read (ORCH-2522..2526), and an unreachable store
    answers 503 with Retry-After (ORCH-2516)."""
    # a lease (the heartbeat's time-to-live) of 3 s: with 500 ms a loaded machine could
    # let the heartbeat lapse before the capabilities read below (seen at load 10)
    run = await start_orchestrator(
        _with_state(mock_config(adapter_options={"token_delay_ms": 2}), lease_ms=3000)
    )
    bridge = run.orch.state
    assert bridge is not None and isinstance(bridge.store, MemoryStateStore)
    async with run.http.get(run.url + "/v1/capabilities") as r:  # ORCH-2532
        assert (await r.json())["state_store"] == {
            "backend": "memory",
            "instance_id": bridge.instance,
            "instances": [bridge.instance],  # ORCH-2543
        }
    assert run.orch.tracing.instance_id == bridge.instance  # span attribute (ORCH-2544)
    resp = await run.submit(max_tokens=5)
    assert resp.status == 202
    tid = (await resp.json())["task_id"]
    events = await run.events(tid)
    kinds = [e for _, e, _ in events]
    assert kinds[0] == "started" and kinds[-1] == "end" and kinds.count("token") == 5
    assert [i for i, _, _ in events] == list(range(len(events)))
    logged = await bridge.store.read(tid)  # the same events, numbered the same, in the store
    assert [(ev.seq, ev.kind) for ev in logged] == [(i, e) for i, e, _ in events]
    assert [d["i"] for _, e, d in events if e == "token"] == [0, 1, 2, 3, 4]
    resumed = await run.events(tid, last_event_id=2)  # Last-Event-ID from the store's log
    assert resumed == events[3:]
    assert not any((await bridge.store.busy("mock")).values())  # the slot is free again

    # cancel: the store holds exactly one terminal, and it is the cancel. Each append
    # takes 50 ms from here on, as a round trip to a remote store may, and the cancel
    # comes once the run has streamed tokens: a batch of the run is then in flight when
    # the cancel's terminal lands, and the store refuses it (`ended`). (With instant
    # appends the control loop stops the writer before its next send: ORCH-2817's wake.)
    store_append = bridge.store.append_many

    async def remote_append(*args: Any) -> Any:
        await asyncio.sleep(0.05)
        return await store_append(*args)

    monkeypatch.setattr(bridge.store, "append_many", remote_append)
    long = (await (await run.submit(max_tokens=1500)).json())["task_id"]
    await run.orch.tasks.wait_for(lambda: run.orch.get(long).state == "running", 30)
    await run.until_tokens(long, 3)
    async with run.http.post(f"{run.url}/v1/tasks/{long}/cancel") as resp:
        assert resp.status == 204
    tail = await run.events(long)
    assert [e for _, e, _ in tail].count("end") == 1 and tail[-1][2]["reason"] == "canceled"
    assert sum(ev.kind in ("end", "error") for ev in await bridge.store.read(long)) == 1

    # ORCH-2531: store latency per op, and the runner's write the cancel refused (its
    # answer comes up to 50 ms after the stream's end: read until it is counted, 5 s at most)
    refused = 'state_store_appends_refused_total{pool_id="mock",reason="ended"}'
    for _ in range(100):
        text = await run.metrics_text()
        if refused in text:
            break
        await asyncio.sleep(0.05)
    for op in ("submit", "dispatch", "append", "cancel"):
        assert f'state_store_op_ms_count{{op="{op}"}}' in text, op
    assert refused in text

    # the store cannot be reached: admission fails closed with 503 + Retry-After
    async def unreachable(_spec: Any, *_: Any) -> Any:
        raise StoreUnavailable("store down", retry_after_ms=2000)

    # admission submits and dispatches in one call (ORCH-2569)
    bridge.store.submit_dispatch = unreachable  # type: ignore[method-assign]
    resp = await run.submit(max_tokens=5)
    assert resp.status == 503 and resp.headers["Retry-After"] == "2"


async def test_two_instances_share_one_store(
    start_orchestrator: Any, mock_config: Any, monkeypatch: Any
) -> None:
    """Two orchestratord instances on one store (ORCH-2526, ORCH-2527, ORCH-2540): a
    task admitted on one streams with the same event ids from the other, a cancel on
    the instance that does not run it ends it at the store at once, and the owner
    stops its run (told on its control channel, or refused at its next write)."""
    shared = MemoryStateStore()

    class Shared(MemoryStateStore):
        @classmethod
        def from_options(cls, options: Any) -> MemoryStateStore:
            return shared

    monkeypatch.setattr(stored, "load_state_store_class", lambda _name: Shared)
    cfg = _with_state(mock_config(adapter_options={"token_delay_ms": 2}))
    a, b = await start_orchestrator(cfg), await start_orchestrator(cfg)
    resp = await a.submit(max_tokens=1500)
    assert resp.status == 202
    tid = (await resp.json())["task_id"]
    async with contextlib.aclosing(shared.tail(tid)) as log:
        await anext(log)  # the first event: a dispatcher of either instance ran it
    view = await shared.task(tid)
    assert view is not None and view.owner is not None
    owner = a if view.owner == a.orch.state.instance else b
    other = b if owner is a else a
    head = await other.events(tid, limit=4)  # read on the instance that does not run it
    assert [i for i, _, _ in head] == [0, 1, 2, 3] and head[0][1] == "started"
    async with other.http.post(f"{other.url}/v1/tasks/{tid}/cancel") as r:
        assert r.status == 204
    logged = await shared.read(tid)
    assert logged[-1].kind == "end" and sum(ev.kind in ("end", "error") for ev in logged) == 1
    rec = owner.orch.get(tid)
    await asyncio.wait_for(rec.ended.wait(), 30)  # the owner's run stopped
    assert len(await shared.read(tid)) == len(logged)  # nothing after the cancel's end
    events = await owner.events(tid)
    assert [i for i, _, _ in events] == list(range(len(events))) and events[-1][1] == "end"
    async with a.http.get(a.url + "/v1/capabilities") as r:  # ORCH-2543: both are live
        live = (await r.json())["state_store"]["instances"]
    assert live == sorted([a.orch.state.instance, b.orch.state.instance])


async def test_cancel_elsewhere_reaches_the_owner_at_once(
    start_orchestrator: Any, mock_config: Any, monkeypatch: Any
) -> None:
    """ORCH-2540: the owner learns of a cancel accepted on another instance from its
    control channel. The engine sends one token and then hangs, and the owner's
    lease renewals are made to report nothing lost, so neither a refused write nor
    a lost lease can stop the run: only the control channel can. The run ends, the
    engine stream is closed and its slot freed, and nothing is logged after the
    cancel's terminal."""
    shared = MemoryStateStore()

    class Shared(MemoryStateStore):
        @classmethod
        def from_options(cls, options: Any) -> MemoryStateStore:
            return shared

    monkeypatch.setattr(stored, "load_state_store_class", lambda _name: Shared)
    cfg = _with_state(mock_config(adapter_options={"token_delay_ms": 5, "fail": "hang_after:1"}))
    cfg = msgspec.structs.replace(  # the startup self-test would hang on the fault
        cfg, observability=msgspec.structs.replace(cfg.observability, self_test=False)
    )
    a, b = await start_orchestrator(cfg), await start_orchestrator(cfg)

    async def nothing_lost() -> list[str]:
        return []

    for run in (a, b):
        monkeypatch.setattr(run.orch.state.leases, "renew_once", nothing_lost)
    tid = (await (await a.submit(max_tokens=50)).json())["task_id"]
    async with contextlib.aclosing(shared.tail(tid)) as log:
        kinds = [(await anext(log)).kind, (await anext(log)).kind]
    assert "started" in kinds
    view = await shared.task(tid)
    assert view is not None and view.owner is not None and view.state == "running"
    owner = a if view.owner == a.orch.state.instance else b
    other = b if owner is a else a
    rec = owner.orch.get(tid)
    assert not rec.terminal
    async with other.http.post(f"{other.url}/v1/tasks/{tid}/cancel") as r:
        assert r.status == 204
    at_cancel = await shared.read(tid)
    assert at_cancel[-1].kind == "end"  # the cancel's terminal, last at the 204
    await asyncio.wait_for(rec.ended.wait(), 30)  # the hung run stopped: told, not refused
    assert rec.runner is not None
    await asyncio.wait_for(asyncio.shield(rec.runner), 30)  # the engine stream is closed
    (replica,) = owner.orch.pools["mock"].replicas.values()
    assert replica.busy == 0  # the engine slot is free
    logged = await shared.read(tid)
    assert logged == at_cancel  # nothing after the cancel's terminal
    text = await owner.metrics_text()
    assert 'state_store_appends_refused_total{pool_id="mock"' not in text


async def test_store_fed_streams_carry_keep_alive_comments(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-2556: an SSE stream read from the store's log gets the same keep-alive
    comment as an in-process stream while no event arrives (ORCH-1962)."""
    cfg = _with_state(mock_config(adapter_options={"token_delay_ms": 300}), lease_ms=2000)
    doc = msgspec.to_builtins(cfg)
    doc.setdefault("limits", {})["sse_keepalive_s"] = 0.1
    run = await start_orchestrator(msgspec.convert(doc, Config))
    assert run.orch.state is not None
    tid = (await (await run.submit(max_tokens=2)).json())["task_id"]
    async with run.http.get(f"{run.url}/v1/tasks/{tid}/stream") as resp:
        assert resp.status == 200
        body = await resp.read()
    assert body.count(b": keep-alive\n\n") >= 2, body  # 300 ms between tokens, 100 ms pings
    events = [block for block in body.split(b"\n\n") if block.startswith(b"id:")]
    assert events[-1].split(b"\n")[1] == b"event: end", events[-1]


async def test_a_503_from_the_store_uses_no_session_turn(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-2551 (with ORCH-1402): a submission the store did not admit (unreachable,
    or an admission withdrawn for want of durability) answers 503 and leaves the
    session's turns and reservation as they were."""
    import uuid

    cfg = _with_state(mock_config(adapter_options={"token_delay_ms": 1}))
    cfg.sessions.max_turns = 2
    run = await start_orchestrator(cfg)
    bridge = run.orch.state
    assert bridge is not None
    sid = str(uuid.uuid4())
    real_submit = bridge.store.submit_dispatch

    async def withdrawn(_spec: Any, *_: Any) -> Any:
        raise StoreUnavailable("not confirmed; the task was not accepted", retry_after_ms=1000)

    bridge.store.submit_dispatch = withdrawn  # type: ignore[method-assign]
    for _ in range(3):  # more refusals than max_turns
        resp = await run.submit(max_tokens=2, session_id=sid)
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    bridge.store.submit_dispatch = real_submit  # type: ignore[method-assign]
    for _ in range(2):  # both turns are still free
        resp = await run.submit(max_tokens=2, session_id=sid)
        assert resp.status == 202, await resp.text()
        await run.events((await resp.json())["task_id"])


async def test_drain_ends_queued_tasks_at_the_store(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-2566 (ORCH-1604): a drain's deadline ends a queued task in the store itself,
    so no instance can dispatch it afterwards; exactly one terminal there."""
    cfg = _with_state(mock_config(adapter_options={"slots": 1, "token_delay_ms": 20}))
    run = await start_orchestrator(cfg)
    store = run.orch.state.store
    t1 = (await (await run.submit(max_tokens=400)).json())["task_id"]
    t2 = (await (await run.submit(max_tokens=400)).json())["task_id"]
    await run.until(lambda: run.orch.get(t1).state == "running")
    assert await store.positions([t2]) == {t2: 0}
    resp = await run.http.post(run.url + "/v1/pools/mock/drain", json={"deadline_ms": 300})
    body = await resp.json()
    assert resp.status == 200 and body["ended"] == 2, body
    view = await store.task(t2)
    assert view is not None and view.state == "ended" and view.owner is None  # never ran
    logged = await store.read(t2)
    assert sum(e.kind in ("end", "error") for e in logged) == 1 and logged[-1].kind == "error"
    assert msgspec.json.decode(logged[-1].data)["code"] == "POOL_UNAVAILABLE"


async def test_a_claim_canceled_before_its_log_is_read_is_not_continued(
    start_orchestrator: Any, mock_config: Any, monkeypatch: Any
) -> None:
    """ORCH-2567: the reaper claims a task whose lease ran out mid-stream, and a cancel
    lands at the store before the reaper reads the task's log (the race seen in the
    store chaos profile, where the store was paused past a lease and the cancel queued
    behind the reap). The log then ends with the cancel's terminal: no engine request
    may open for a continuation, and the takeover counts as `ended`."""
    cfg = _with_state(
        mock_config(adapter_options={"token_delay_ms": 5, "fail": "hang_after:1"}), lease_ms=400
    )
    cfg = msgspec.structs.replace(  # the startup self-test would hang on the fault
        cfg, observability=msgspec.structs.replace(cfg.observability, self_test=False)
    )
    run = await start_orchestrator(cfg)
    bridge = run.orch.state
    assert bridge is not None

    async def renew_nothing() -> list[str]:
        return []  # the lease runs out at the store as if this instance were paused

    monkeypatch.setattr(bridge.leases, "renew_once", renew_nothing)
    store = bridge.store
    real_read = store.read
    canceled: list[str] = []

    async def read_after_a_cancel(task_id: str, *args: Any, **kw: Any) -> Any:
        if not canceled:  # the cancel's step comes between the claim and this read
            canceled.append(task_id)
            await store.cancel(task_id)
        return await real_read(task_id, *args, **kw)

    monkeypatch.setattr(store, "read", read_after_a_cancel)
    (replica,) = run.orch.pools["mock"].replicas.values()
    tid = (await (await run.submit(max_tokens=50)).json())["task_id"]
    await run.orch.tasks.wait_for(lambda: run.orch.get(tid).tokens_out >= 1, 30)
    started = replica.adapter.generations_started
    text = ""
    for _ in range(100):  # the reaper's period is half a lease
        text = await run.metrics_text()
        if "state_store_takeovers_total{" in text:
            break
        await asyncio.sleep(0.1)
    assert canceled == [tid]
    assert 'state_store_takeovers_total{outcome="ended",pool_id="mock"} 1.0' in text, text
    assert "continued" not in text
    logged = await real_read(tid)
    assert sum(ev.kind in ("end", "error") for ev in logged) == 1
    assert logged[-1].kind == "end"
    await asyncio.sleep(0.3)  # room for a wrongly launched continuation to open
    assert replica.adapter.generations_started == started  # no engine request after it
    await run.orch.tasks.wait_for(lambda: replica.busy == 0, 30)


async def test_a_dispatch_whose_cancel_came_first_never_starts(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-2567: a cancel's control message can reach the owner before the reply of
    the dispatch (or claim) that made it the owner, since the two travel on different
    connections. The run must then not start: no engine request, no lease held."""
    run = await start_orchestrator(_with_state(mock_config(), lease_ms=2000))
    bridge = run.orch.state
    assert bridge is not None
    pool = run.orch.pools["mock"]
    (replica,) = pool.replicas.values()
    done = (await (await run.submit(max_tokens=1)).json())["task_id"]
    await run.orch.tasks.wait_for(lambda: run.orch.get(done).terminal, 30)
    rec = stored.record_of(stored.spec_of(run.orch.get(done)))  # a fresh copy of it
    started = replica.adapter.generations_started
    rec.task_id = "canceled-before-its-dispatch"
    bridge._canceled_elsewhere(rec.task_id)  # the control message, first
    assert bridge.go(pool, replica, rec, 7, 0) is False  # then the dispatch's reply
    assert rec.runner is None and rec.task_id not in bridge.leases.held
    assert replica.adapter.generations_started == started
