"""Queued tasks of an instance that is gone (ORCH-2600, ORCH-2601; proof of ORCH-2602),
two orchestratord instances on one real valkey-server and one engine slot: a task
admitted on A and still queued when A shuts down is adopted by B, whose waiting loop
ends it at its queue TTL while B's own long run still streams."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.testing_engines.valkey import valkey_server


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_server(tmp_path_factory.mktemp("valkey")) as url:
        yield url


def _config(url: str, prefix: str) -> Config:
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 0.25},
        "auth": {"enabled": False},
        "state": {"backend": "valkey", "url": url, "key_prefix": prefix, "lease_ms": 1000},
        "scheduling": {"waiting": {"queued_event_interval_s": 0.2, "queue_ttl_s": 2.0}},
        "pools": [
            {
                "id": "mock",
                "engine": "mock",
                "model": "mock-model",
                "endpoints": ["mock://0"],
                "adapter_options": {"slots": 1, "token_delay_ms": 10},
            }
        ],
    }
    return msgspec.convert(doc, Config)


async def _tid(run: Any, **body: Any) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    tid: str = (await resp.json())["task_id"]
    return tid


async def test_a_gone_instances_queued_task_expires_on_a_survivor(
    start_orchestrator: Any, valkey_url: str
) -> None:
    cfg = _config(valkey_url, f"ad{uuid.uuid4().hex[:8]}")
    a, b = await start_orchestrator(cfg), await start_orchestrator(cfg)
    store = b.orch.state.store
    blocker = await _tid(b, max_tokens=1500)  # ~15 s on the one slot, run by B
    async with contextlib.aclosing(store.tail(blocker)) as log:
        async for ev in log:
            if ev.kind == "token":
                break
    waiting = await _tid(a, max_tokens=5)  # queued behind it; known only to A
    assert await store.queued("mock") == [waiting]
    assert a.stop is not None
    a.stop.set()  # A shuts down: its queued task stays at the store (ORCH-2527)
    for _ in range(200):
        if a.orch.state.instance not in {v.instance_id for v in await store.instances()}:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("A is still listed")
    assert b.orch.tasks.get(waiting) is None or b.orch.tasks.get(waiting).state == "queued"
    events = []
    async with contextlib.aclosing(store.tail(waiting)) as log:
        async with asyncio.timeout(10):
            async for ev in log:
                events.append(ev)
    blocker_view = await store.task(blocker)
    assert blocker_view is not None and blocker_view.state == "running"  # still streaming
    assert [e.kind for e in events if e.kind in ("end", "error")] == ["error"]
    assert events[-1].kind == "error" and b'"ADMISSION_REJECT"' in events[-1].data
    assert b"queued longer than" in events[-1].data
    assert any(e.kind == "queued" for e in events)
    view = await store.task(waiting)
    assert view is not None and view.state == "ended"
    await store.cancel(blocker)
