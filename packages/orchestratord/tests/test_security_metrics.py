"""Refused requests and cut or refused streams as metrics (ORCH-8017..8019)."""

from __future__ import annotations

import asyncio

from llama_orch.orchestratord.limits import StreamCounter, TaskStream
from llama_orch.orchestratord.metrics import Metrics
from prometheus_client.parser import text_string_to_metric_families

from .conftest import bearer

Counts = dict[tuple[tuple[str, str], ...], float]


def counts(metrics: Metrics, family: str) -> Counts:
    """``family``'s counter values by sorted label set, from a real render."""
    out: Counts = {}
    for fam in text_string_to_metric_families(metrics.render().decode()):
        if fam.name == family.removesuffix("_total"):
            for s in fam.samples:
                if s.name == family:
                    out[tuple(sorted(s.labels.items()))] = s.value
    return out


def refused(reason: str, api: str, tenant: str) -> tuple[tuple[str, str], ...]:
    return (("api", api), ("reason", reason), ("tenant", tenant))


async def test_auth_refusals_are_counted_by_reason_and_tenant(
    start_orchestrator, mock_config, tenant_keys
):
    """ORCH-8017: 401s (missing, malformed, unknown key) and 403s (wrong role) on the task
    API, the control plane and /metrics are counted with api=orchqueue; a 403 of a tenant
    key carries its configured tenant, an admin key's `none`; accepted requests count
    nothing, and no label holds a presented key."""
    auth, keys = tenant_keys("a")
    run = await start_orchestrator(mock_config(auth=auth))
    metrics = run.orch.metrics
    # accepted: a submit, its stream, a control-plane read, a scrape
    resp = await run.submit(key=keys["a"], max_tokens=2)
    assert resp.status == 202
    tid = (await resp.json())["task_id"]
    assert (await run.events(tid, key=keys["a"]))[-1][1] == "end"
    async with run.http.get(run.url + "/metrics", headers=bearer(keys["admin"])) as r:
        assert r.status == 200
    assert counts(metrics, "auth_refused_total") == {}
    unknown = "llo_not-a-key-" + "z" * 40
    assert (await run.submit(key=None)).status == 401
    assert (await run.submit(key=unknown)).status == 401
    async with run.http.post(
        run.url + "/v1/tasks", json={"prompt": "x"}, headers={"Authorization": "Basic abc"}
    ) as r:
        assert r.status == 401
    async with run.http.get(run.url + "/metrics", headers=bearer(unknown)) as r:
        assert r.status == 401
    async with run.http.get(run.url + "/metrics", headers=bearer(keys["a"])) as r:
        assert r.status == 403  # a tenant key on an admin route
    assert (await run.submit(key=keys["admin"])).status == 403  # an admin key submitting
    assert counts(metrics, "auth_refused_total") == {
        refused("unauthenticated", "orchqueue", "none"): 4,
        refused("forbidden", "orchqueue", "a"): 1,
        refused("forbidden", "orchqueue", "none"): 1,
    }
    text = metrics.render().decode()
    assert unknown not in text and keys["a"] not in text and "Basic" not in text


async def test_stream_limit_refusals_are_counted_once(start_orchestrator, mock_config, tenant_keys):
    """ORCH-8019: a stream refused at max_streams_per_tenant, by GET and by a streaming
    submit (ORCH-2711), is counted by tenant and not in tasks_rejected_total."""
    auth, keys = tenant_keys("a")
    cfg = mock_config(
        auth=auth,
        limits={"max_streams_per_tenant": 1},
        adapter_options={"token_delay_ms": 50, "slots": 4},
    )
    run = await start_orchestrator(cfg)
    a = keys["a"]
    tid = (await (await run.submit(key=a, max_tokens=200)).json())["task_id"]
    url = f"{run.url}/v1/tasks/{tid}/stream"
    first = await run.http.get(url, headers=bearer(a))
    try:
        assert first.status == 200
        assert counts(run.orch.metrics, "streams_refused_total") == {}
        async with run.http.get(url, headers=bearer(a)) as r:
            assert r.status == 429
        sse = {**bearer(a), "Accept": "text/event-stream"}
        async with run.http.post(run.url + "/v1/tasks", json={"prompt": "x"}, headers=sse) as r:
            assert r.status == 429
        assert counts(run.orch.metrics, "streams_refused_total") == {(("tenant", "a"),): 2}
        assert counts(run.orch.metrics, "tasks_rejected_total") == {}  # not counted twice
    finally:
        first.close()
    async with run.http.post(f"{run.url}/v1/tasks/{tid}/cancel", headers=bearer(a)) as r:
        assert r.status == 204


async def _frames(n: int) -> object:
    for i in range(n):
        yield b"data: %d\n\n" % i


async def _serve(stream: TaskStream, *, stall: bool, disconnect: bool) -> None:
    """Run ``stream`` against a fake client: one that never accepts a body chunk
    (``stall``), one that has gone away (``disconnect``), or one that reads all."""
    never = asyncio.Event()

    async def receive() -> dict[str, object]:
        if disconnect:
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}
        await never.wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body" and stall:
            await never.wait()  # a full socket buffer: the write never completes
        if message["type"] == "http.response.body" and disconnect:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(stream({"type": "http"}, receive, send), 5)


async def test_a_stalled_reader_cut_is_counted_by_tenant():
    """ORCH-8018: a stream cut because its client read nothing for stall_timeout_s counts
    once under the task's tenant; a completed stream and one whose client left count
    nothing."""
    metrics = Metrics(queue_depths=list)
    counter = StreamCounter(metrics.streams_cut, metrics.streams_refused)

    def stream(tenant: str) -> TaskStream:
        return TaskStream(
            _frames(50), task_id="t-" + tenant, tenant=tenant, counter=counter,
            stall_timeout_s=0.2,
        )  # fmt: skip

    await _serve(stream("done"), stall=False, disconnect=False)
    await _serve(stream("left"), stall=False, disconnect=True)
    assert counts(metrics, "streams_cut_total") == {}
    await _serve(stream("a"), stall=True, disconnect=False)
    assert counts(metrics, "streams_cut_total") == {(("tenant", "a"),): 1}
    assert counter["a"] == counter["done"] == counter["left"] == 0  # every stream closed
    metrics.shutdown()
