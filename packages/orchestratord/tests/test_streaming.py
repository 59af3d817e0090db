"""The relay path (issue #20): stream limits of a single tenant, one request per task."""

from __future__ import annotations

import asyncio

import msgspec
from llama_orch.core.config import LimitsConfig
from llama_orch.core.sse import SSEParser


async def test_single_tenant_holds_64_streams_with_default_limits(start_orchestrator, mock_config):
    """ORCH-2701: auth off (one tenant), default limits: 64 open streams while the queue
    has room get no 429."""
    assert LimitsConfig().max_streams_per_tenant == 1024
    cfg = mock_config(
        admission={"queue_capacity": 128},
        adapter_options={"token_delay_ms": 20, "slots": 8},
    )
    run = await start_orchestrator(cfg)
    ids = []
    for _ in range(64):
        resp = await run.submit(max_tokens=400)
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["task_id"])
    opened = await asyncio.gather(*(run.http.get(f"{run.url}/v1/tasks/{t}/stream") for t in ids))
    try:
        assert [r.status for r in opened] == [200] * 64
    finally:
        for r in opened:
            r.close()
        for t in ids:
            async with run.http.post(f"{run.url}/v1/tasks/{t}/cancel") as r:
                assert r.status == 204


_SSE = {"Accept": "text/event-stream"}


async def _read_sse(resp) -> list[tuple[int, str, dict]]:
    parser = SSEParser()
    out = []
    async for chunk in resp.content.iter_any():
        for msg in parser.feed(chunk):
            out.append((int(msg.id), msg.event, msgspec.json.decode(msg.data)))
    return out


async def test_submit_with_accept_event_stream_streams_the_task(start_orchestrator, mock_config):
    """ORCH-2710: one request admits and streams; the frames are the task's log, the same
    as GET .../stream replays; headers name the task; JSON-first Accept keeps 202."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 1}))
    body = {"prompt": "hello world", "max_tokens": 5}
    async with run.http.post(run.url + "/v1/tasks", json=body, headers=_SSE) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        tid = resp.headers["X-Task-Id"]
        assert resp.headers["Location"] == f"/v1/tasks/{tid}"
        assert resp.headers["X-Correlation-Id"]
        events = await _read_sse(resp)
    names = [e for _, e, _ in events]
    assert names[0] in ("queued", "started") and names[-1] == "end"
    assert names.count("token") == 5
    assert [i for i, _, _ in events] == list(range(len(events)))
    assert await run.events(tid) == events  # the same log as the stream route
    both = {"Accept": "application/json, text/event-stream"}
    async with run.http.post(run.url + "/v1/tasks", json=body, headers=both) as resp:
        assert resp.status == 202 and "task_id" in await resp.json()
    zero = {"Accept": "text/event-stream;q=0, application/json"}
    async with run.http.post(run.url + "/v1/tasks", json=body, headers=zero) as resp:
        assert resp.status == 202


async def test_streaming_submit_refusals_are_json_and_admit_nothing(
    start_orchestrator, mock_config
):
    """ORCH-2710/2711: a refused streaming submit answers the JSON envelope of the 202 path;
    one stream beyond the tenant's bound is 429 quota before anything is admitted."""
    cfg = mock_config(limits={"max_streams_per_tenant": 1}, adapter_options={"token_delay_ms": 50})
    run = await start_orchestrator(cfg)
    async with run.http.post(
        run.url + "/v1/tasks", json={"prompt": "x", "max_tokens": 0}, headers=_SSE
    ) as resp:
        assert resp.status == 400 and resp.headers["Content-Type"] == "application/json"
        assert (await resp.json())["code"] == "INVALID_PARAMS"
    first = await run.http.post(
        run.url + "/v1/tasks", json={"prompt": "x", "max_tokens": 200}, headers=_SSE
    )
    try:
        assert first.status == 200
        admitted = len(run.orch.tasks)
        async with run.http.post(
            run.url + "/v1/tasks", json={"prompt": "x", "max_tokens": 2}, headers=_SSE
        ) as resp:
            assert resp.status == 429
            err = await resp.json()
            assert err["code"] == "ADMISSION_REJECT" and err["policy_label"] == "quota"
        assert len(run.orch.tasks) == admitted
    finally:
        first.close()
        tid = first.headers["X-Task-Id"]
        async with run.http.post(f"{run.url}/v1/tasks/{tid}/cancel") as r:
            assert r.status == 204


async def test_streaming_submit_disconnect_keeps_the_task(start_orchestrator, mock_config):
    """ORCH-2712: dropping the streaming submit does not cancel the task; Last-Event-ID
    resumes it on the stream route to its end."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 20}))
    resp = await run.http.post(
        run.url + "/v1/tasks", json={"prompt": "x", "max_tokens": 20}, headers=_SSE
    )
    assert resp.status == 200
    tid = resp.headers["X-Task-Id"]
    parser, seen = SSEParser(), []
    async for chunk in resp.content.iter_any():
        seen += [m for m in parser.feed(chunk)]
        if any(m.event == "token" for m in seen):
            break
    resp.close()
    last = int(seen[-1].id)
    rest = await run.events(tid, last_event_id=last)
    assert rest[0][0] == last + 1 and rest[-1][1] == "end"
    assert rest[-1][2]["reason"] == "length" and rest[-1][2]["tokens_out"] == 20


async def test_no_spans_are_built_without_an_exporter(start_orchestrator, mock_config):
    """ORCH-2730: no exporter, no processor: a running task has no spans."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 20}))
    assert run.orch.tracing.enabled is False
    resp = await run.http.post(
        run.url + "/v1/tasks", json={"prompt": "x", "max_tokens": 5}, headers=_SSE
    )
    tid = resp.headers["X-Task-Id"]
    assert run.orch.tracing._spans == {}
    events = await _read_sse(resp)
    assert events[-1][1] == "end" and run.orch.tasks.get(tid) is not None
    assert run.orch.tracing._spans == {}


async def test_sse_writer_ends_at_the_disconnect(start_orchestrator, mock_config):
    """ORCH-2751: the lean SSE writer ends at the client's disconnect, not at the task's
    end (the tenant's one stream is free again while the task still runs), and its start
    still passes the middlewares (the correlation id is echoed)."""
    cfg = mock_config(limits={"max_streams_per_tenant": 1}, adapter_options={"token_delay_ms": 20})
    run = await start_orchestrator(cfg)
    host, port = run.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))  # a socket we close
    body = b'{"prompt": "x", "max_tokens": 2000}'  # 40 s of tokens
    writer.write(
        b"POST /v1/tasks HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n"
        b"X-Correlation-Id: cid-2751\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    assert head.startswith("http/1.1 200") and "x-correlation-id: cid-2751" in head
    tid = head.split("x-task-id: ")[1].split("\r\n")[0]
    assert await reader.read(1)  # the stream is running
    writer.close()
    for _ in range(200):  # bounded poll (the disconnect has no event to await here)
        async with run.http.post(
            run.url + "/v1/tasks", json={"prompt": "x", "max_tokens": 1}, headers=_SSE
        ) as again:
            if again.status == 200:  # queued behind the first task (one slot)
                second = again.headers["X-Task-Id"]
                break
            assert again.status == 429
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the dropped stream still counts after 10 s")
    rec = run.orch.tasks.get(tid)
    assert rec is not None and not rec.terminal  # ORCH-2712: the task goes on
    for task_id in (tid, second):
        async with run.http.post(f"{run.url}/v1/tasks/{task_id}/cancel") as r:
            assert r.status == 204
