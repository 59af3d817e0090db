"""Waiting tasks with a state store, two orchestratord instances on one real
valkey-server (ORCH-2560, ORCH-2561, ORCH-2562, ORCH-2563): exact queue positions in
the 202 and in the status of tasks another instance admitted, ``queued`` events in
the store's log (read from either instance), and bounded waits that end each task
exactly once."""

from __future__ import annotations

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
        "scheduling": {"waiting": {"queued_event_interval_s": 0.2, "queue_ttl_s": 3.0}},
        "pools": [
            {
                "id": "mock",
                "engine": "mock",
                "model": "mock-model",
                "endpoints": ["mock://0"],
                "adapter_options": {"slots": 1, "token_delay_ms": 5},
            }
        ],
    }
    return msgspec.convert(doc, Config)


async def _status(run: Any, tid: str) -> dict[str, Any]:
    async with run.http.get(f"{run.url}/v1/tasks/{tid}") as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def test_queued_events_positions_and_expiry_across_instances(
    start_orchestrator: Any, valkey_url: str
) -> None:
    cfg = _config(valkey_url, f"w{uuid.uuid4().hex[:8]}")
    a, b = await start_orchestrator(cfg), await start_orchestrator(cfg)
    store = a.orch.state.store
    # the one slot the store knows is taken by a long task; the rest wait behind it
    blocker = (await (await a.submit(max_tokens=1500)).json())["task_id"]
    async with contextlib.aclosing(store.tail(blocker)) as log:
        assert (await anext(log)).kind == "started"
    queued = []
    for run in (a, a, b):
        resp = await run.submit(max_tokens=5)
        assert resp.status == 202
        body = await resp.json()
        queued.append(body["task_id"])
        assert body["queue_position"] == len(queued) - 1  # exact, from the store
    q1, q2, q3 = queued
    # ORCH-2563: status on the instance that did not admit the task
    assert (await _status(b, q1))["queue_position"] == 0
    st = await _status(a, q3)
    assert (st["state"], st["queue_position"]) == ("queued", 2)
    # ORCH-2561: the `queued` event is in the store's log, read from either instance
    (first,) = await b.events(q1, limit=1)
    assert first[:2] == (0, "queued") and first[2]["queue_position"] == 0
    (first,) = await a.events(q3, limit=1)
    assert first[:2] == (0, "queued") and first[2]["queue_position"] == 2
    async with b.http.post(f"{b.url}/v1/tasks/{q1}/cancel") as r:
        assert r.status == 204
    # q3 moved up: a new `queued` event with its new position (any instance writes it)
    async with contextlib.aclosing(store.tail(q3)) as log:
        async for ev in log:
            if ev.kind == "queued" and msgspec.json.decode(ev.data)["queue_position"] == 1:
                break
    assert (await _status(b, q3))["queue_position"] == 1
    # ORCH-2562: the queue TTL ends q2 and q3 with one typed error each, though both
    # instances know q3 and try; never the running blocker
    for tid in (q2, q3):
        events = await a.events(tid)
        kinds = [e for _, e, _ in events]
        assert set(kinds[:-1]) == {"queued"} and kinds[-1] == "error", kinds
        assert events[-1][2]["code"] == "ADMISSION_REJECT"
        assert [i for i, _, _ in events] == list(range(len(events)))
        assert sum(e.kind in ("end", "error") for e in await store.read(tid)) == 1
        # the log never has more than one `queued` event per interval and position change
        assert len(kinds) <= 2 + 3.0 / 0.2
    expired = 0
    for run in (a, b):
        text = await run.metrics_text()
        for line in text.splitlines():
            if line.startswith("tasks_expired_total{") and 'reason="queue_ttl"' in line:
                expired += int(float(line.rsplit(" ", 1)[1]))
    assert expired == 2  # counted once per task, by the instance whose expire won
    st = await _status(b, blocker)
    assert st["state"] == "running"
    async with a.http.post(f"{a.url}/v1/tasks/{blocker}/cancel") as r:
        assert r.status == 204
    view = await store.task(blocker)
    assert view is not None and view.state == "ended"
    assert not [ev for ev in await store.read(blocker) if ev.kind == "queued"]
