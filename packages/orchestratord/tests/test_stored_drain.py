"""A pool drain applied by every instance sharing a state store (ORCH-2585..2591):
orchestratord instances on one real valkey-server and one engine slot. A drain taken
by one instance refuses new tasks on all of them with ORCH-1604's 503, shows on each
one's health, ends the task another instance runs at the deadline with one
``POOL_UNAVAILABLE`` and the queued one at the store; an instance started after the
drain refuses too; brought back at the store, every instance serves again."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.core.errors import PoolUnavailable
from llama_orch.core.state_store import Dispatched, Event, TaskSpec
from llama_orch.testing_engines.valkey import valkey_server


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_server(tmp_path_factory.mktemp("valkey")) as url:
        yield url


def _config(url: str, prefix: str, slots: int = 1) -> Config:
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 0.25},
        "auth": {"enabled": False},
        "state": {"backend": "valkey", "url": url, "key_prefix": prefix, "lease_ms": 1000},
        "pools": [
            {
                "id": "mock",
                "engine": "mock",
                "model": "mock-model",
                "endpoints": ["mock://0"],
                "adapter_options": {"slots": slots, "token_delay_ms": 20},
            }
        ],
    }
    return msgspec.convert(doc, Config)


async def _health(run: Any) -> dict[str, Any]:
    async with run.http.get(f"{run.url}/v1/pools/mock/health") as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def _refusal(run: Any) -> tuple[int, str, str]:
    resp = await run.submit(max_tokens=5)
    body = await resp.json()
    return resp.status, body.get("code"), body.get("message")


async def _to_the_end(log: Any) -> list[Any]:
    return [ev async for ev in log]


async def test_a_drain_on_one_instance_applies_on_every_instance(
    start_orchestrator: Any, valkey_url: str
) -> None:
    cfg = _config(valkey_url, f"d{uuid.uuid4().hex[:8]}")
    a, b = await start_orchestrator(cfg), await start_orchestrator(cfg)
    store = a.orch.state.store
    # the one slot runs a long task on B; a second task waits, admitted by A
    running = (await (await b.submit(max_tokens=1500)).json())["task_id"]
    async with contextlib.aclosing(store.tail(running)) as log:
        assert (await anext(log)).kind == "started"
    view = await store.task(running)
    assert view is not None and view.owner == b.orch.state.instance
    waiting = (await (await a.submit(max_tokens=5)).json())["task_id"]
    assert await store.positions([waiting]) == {waiting: 0}

    drain = asyncio.create_task(
        a.http.post(a.url + "/v1/pools/mock/drain", json={"deadline_ms": 1500})
    )
    pool_b = b.orch.pools["mock"]
    assert await b.orch.state.drains.until(lambda: pool_b.draining, 10), "B never heard"
    # ORCH-2586, ORCH-2588: the same refusal on both instances, and at the store itself
    refused_a, refused_b = await _refusal(a), await _refusal(b)
    assert refused_a == refused_b == (503, "POOL_UNAVAILABLE", "pool mock is draining")
    spec = TaskSpec(task_id=uuid.uuid4().hex, pool="mock", priority="interactive")
    with pytest.raises(PoolUnavailable, match="draining"):
        await b.orch.state.store.submit(spec)
    assert (await _health(a))["draining"] and (await _health(b))["draining"]
    # B still runs its task until the deadline
    assert (await store.task(running)).state == "running"  # type: ignore[union-attr]

    resp = await drain
    body = await resp.json()
    assert resp.status == 200, body
    # ORCH-2610: A ran nothing of the pool; it counts B's task ended at the deadline
    # and the queued one ended at the store
    assert body["ended"] == 2 and body["finished"] == 0, body
    assert body["waited_ms"] >= 1000, body  # it answered at the deadline, not before
    # ORCH-2588: B ends the task it runs at the deadline with one POOL_UNAVAILABLE
    async with contextlib.aclosing(store.tail(running)) as log:
        tail = await asyncio.wait_for(_to_the_end(log), 10)
    assert tail[-1].kind == "error"
    for tid in (running, waiting):
        logged = await store.read(tid)
        assert sum(e.kind in ("end", "error") for e in logged) == 1, tid
        assert logged[-1].kind == "error"
        assert msgspec.json.decode(logged[-1].data)["code"] == "POOL_UNAVAILABLE"
    assert [e.kind for e in await store.read(waiting)] == ["error"]  # it never ran
    tokens = [e for e in await store.read(running) if e.kind == "token"]
    assert 10 < len(tokens) < 1500  # it ran until the deadline, not to its end
    assert await store.busy("mock") == {}
    events = await b.events(running)  # the stream from B shows the same terminal
    assert events[-1][1] == "error" and events[-1][2]["code"] == "POOL_UNAVAILABLE"

    # an instance that starts while the pool is drained refuses it too
    c = await start_orchestrator(cfg)
    assert c.orch.pools["mock"].draining and (await _health(c))["draining"]
    assert await _refusal(c) == refused_a

    # ORCH-2590: brought back at the store, every instance serves the pool again
    assert await store.undrain_pool("mock")
    for run in (a, b, c):
        pool = run.orch.pools["mock"]
        assert await run.orch.state.drains.until(lambda p=pool: not p.draining, 10)
        assert not (await _health(run))["draining"]
    again = await b.submit(max_tokens=3)
    assert again.status == 202, await again.text()
    tid = (await again.json())["task_id"]
    events = await a.events(tid)
    assert events[-1][1] == "end" and events[-1][2]["reason"] == "length", events[-1]


async def test_the_answer_counts_every_instances_tasks(
    start_orchestrator: Any, valkey_url: str
) -> None:
    """ORCH-2610 (proof of ORCH-2611): the drain taken on A, which runs nothing of the
    pool, counts B's task that finished before the deadline, B's task ended at it and
    the queued task, and answers only once all three hold their terminal at the store."""
    cfg = _config(valkey_url, f"d{uuid.uuid4().hex[:8]}", slots=2)
    a, b = await start_orchestrator(cfg), await start_orchestrator(cfg)
    store = a.orch.state.store
    short = (await (await b.submit(max_tokens=30)).json())["task_id"]  # ~0.6 s
    long = (await (await b.submit(max_tokens=1500)).json())["task_id"]  # ~30 s
    for tid in (short, long):
        async with contextlib.aclosing(store.tail(tid)) as log:
            assert (await anext(log)).kind == "started"
        view = await store.task(tid)
        assert view is not None and view.owner == b.orch.state.instance
    waiting = (await (await a.submit(max_tokens=5)).json())["task_id"]
    assert await store.positions([waiting]) == {waiting: 0}

    resp = await a.http.post(a.url + "/v1/pools/mock/drain", json={"deadline_ms": 1500})
    body = await resp.json()
    # at the answer, every task of the pool holds its terminal at the store
    views = {tid: await store.task(tid) for tid in (short, long, waiting)}
    assert resp.status == 200, body
    assert {tid: v.state for tid, v in views.items() if v is not None} == dict.fromkeys(
        (short, long, waiting), "ended"
    )
    assert (body["finished"], body["ended"]) == (1, 2), body
    assert body["waited_ms"] >= 1000, body
    kinds = {tid: (await store.read(tid))[-1].kind for tid in (short, long, waiting)}
    assert kinds == {short: "end", long: "error", waiting: "error"}


async def test_the_answer_waits_for_a_terminal_after_the_deadline(
    start_orchestrator: Any, valkey_url: str
) -> None:
    """ORCH-2610 (proof of ORCH-2615): a run of the pool held by another instance whose
    terminal reaches the store after the drain's deadline (here the test plays that
    instance, ``x``, at the store: it ends its run 0.6 s past the deadline, well within
    ``2 x lease_ms``) is counted, and the answer comes only after that terminal. It
    fails with an answer at the deadline (the run then counted in neither)."""
    cfg = _config(valkey_url, f"d{uuid.uuid4().hex[:8]}", slots=2)
    a = await start_orchestrator(cfg)
    store = a.orch.state.store
    await store.heartbeat("x", 60_000)
    spec = TaskSpec(task_id=uuid.uuid4().hex, pool="mock", priority="interactive")
    # the instance sends its replicas to the store from its dispatch loop once it is
    # ready, maybe after this line under load: the same views sent first, so that the
    # run below finds the slot (as in test_stored_adoption.py, whose miss a whole run saw;
    # this test failed once in a loaded run, its message not kept)
    await store.set_replicas("mock", a.orch.state._slots(a.orch.pools["mock"]))
    _, run = await store.submit_dispatch(spec, "x", 60_000)
    assert isinstance(run, Dispatched), run
    await store.append(spec.task_id, run.epoch, [Event("started", b"{}")])

    drain = asyncio.create_task(
        a.http.post(a.url + "/v1/pools/mock/drain", json={"deadline_ms": 1000})
    )
    await asyncio.sleep(1.6)  # x ends its run past the deadline, as a slow instance may
    assert not drain.done(), "the answer came before x's terminal"
    await store.append(
        spec.task_id, run.epoch, [Event("token", b'{"t":"x","i":0}'), Event("end", b"{}")]
    )
    ended_at = time.monotonic()
    resp = await asyncio.wait_for(drain, 10)
    answered_at = time.monotonic()
    body = await resp.json()
    assert resp.status == 200, body
    assert (body["finished"], body["ended"]) == (1, 0), body
    assert body["waited_ms"] >= 1500, body
    assert answered_at >= ended_at
