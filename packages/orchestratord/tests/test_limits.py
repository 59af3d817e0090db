"""Limits on what one client can make the server hold (ORCH-8010..8015, ORCH-8018)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from urllib.parse import urlsplit

import pytest
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.api import TokenEvent
from llama_orch.core.errors import ErrorCode
from llama_orch.orchestratord.tasks import TaskRecord

from .test_security_metrics import counts


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_body_over_the_limit_is_413(start_orchestrator, mock_config, tenant_keys):
    """ORCH-8010: declared and undeclared (chunked) bodies beyond max_body_bytes → 413."""
    auth, keys = tenant_keys("a")
    run = await start_orchestrator(mock_config(auth=auth, limits={"max_body_bytes": 2048}))
    big = b'{"prompt": "' + b"x" * 4000 + b'"}'
    headers = {**_h(keys["a"]), "Content-Type": "application/json", "X-Correlation-Id": "c413"}
    async with run.http.post(run.url + "/v1/tasks", data=big, headers=headers) as r:
        assert r.status == 413 and r.headers["X-Correlation-Id"] == "c413"
        assert (await r.json())["code"] == "REQUEST_TOO_LARGE"

    async def chunks():
        for n in range(0, len(big), 512):
            yield big[n : n + 512]

    async with run.http.post(run.url + "/v1/tasks", data=chunks(), headers=headers) as r:
        assert r.status == 413, await r.text()
        assert (await r.json())["code"] == "REQUEST_TOO_LARGE"
    small = {"prompt": "hello", "max_tokens": 2}
    async with run.http.post(run.url + "/v1/tasks", json=small, headers=_h(keys["a"])) as r:
        assert r.status == 202
    assert len(run.orch.tasks) == 1


async def test_prompt_bytes_limit(start_orchestrator, mock_config, tenant_keys):
    """ORCH-8011: prompt or message bytes beyond max_prompt_bytes → 400 before the engine."""
    auth, keys = tenant_keys("a")
    run = await start_orchestrator(mock_config(auth=auth, limits={"max_prompt_bytes": 100}))
    resp = await run.submit(key=keys["a"], prompt="é" * 51)  # 102 UTF-8 bytes
    assert resp.status == 400
    assert "max_prompt_bytes" in (await resp.json())["message"]
    msgs = [{"role": "user", "content": "x" * 60}, {"role": "user", "content": "y" * 60}]
    resp = await run.submit(key=keys["a"], workload="chat", messages=msgs, prompt=None)
    assert resp.status == 400 and "max_prompt_bytes" in (await resp.json())["message"]
    assert (await run.submit(key=keys["a"], prompt="x" * 100, max_tokens=2)).status == 202


async def test_oversized_headers_are_refused(start_orchestrator, mock_config, tenant_keys):
    """ORCH-8012: a complete head beyond max_header_bytes → 431 envelope before any route;
    a head still arriving beyond the bound is refused by Hypercorn itself."""
    auth, keys = tenant_keys("a")
    run = await start_orchestrator(mock_config(auth=auth, limits={"max_header_bytes": 4096}))
    host, port = urlsplit(run.url).hostname, urlsplit(run.url).port
    line = f"GET /v1/capabilities HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys['a']}\r\n"
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{line}X-Padding: {'p' * 8000}\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"x-correlation-id" in head.lower()
    assert b'"code":"HEADERS_TOO_LARGE"' in body
    # the same head trickling in: Hypercorn's bound on an incomplete head applies
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(line.encode())
    answer = b""
    for _ in range(4):
        await asyncio.sleep(0.05)
        try:
            writer.write(f"X-Padding: {'p' * 2000}\r\n".encode())
            await writer.drain()
        except ConnectionError:
            break  # the server already answered and closed
        with contextlib.suppress(TimeoutError):
            answer += await asyncio.wait_for(reader.read(65536), 0.2)
        if answer:
            break
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"x-correlation-id" not in answer.lower()  # the app never saw it
    async with run.http.get(run.url + "/v1/capabilities", headers=_h(keys["a"])) as r:
        assert r.status == 200  # normal heads still work


async def test_open_streams_per_tenant_are_limited(start_orchestrator, mock_config, tenant_keys):
    """ORCH-8013: one stream beyond max_streams_per_tenant → 429 quota; other tenants and
    a freed slot are unaffected."""
    auth, keys = tenant_keys("a", "b")
    cfg = mock_config(
        auth=auth,
        limits={"max_streams_per_tenant": 2},
        adapter_options={"token_delay_ms": 50, "slots": 4},
    )
    run = await start_orchestrator(cfg)
    a = keys["a"]
    resp = await run.submit(key=a, max_tokens=200)
    tid = (await resp.json())["task_id"]
    url = f"{run.url}/v1/tasks/{tid}/stream"
    opened = [await run.http.get(url, headers=_h(a)) for _ in range(2)]
    assert [r.status for r in opened] == [200, 200]
    async with run.http.get(url, headers=_h(a)) as r:
        assert r.status == 429
        err = await r.json()
        assert err["code"] == "ADMISSION_REJECT" and err["policy_label"] == "quota"
        assert int(r.headers["Retry-After"]) >= 1 and "X-Backoff-Ms" in r.headers
    resp = await run.submit(key=keys["b"], max_tokens=2)
    other = (await resp.json())["task_id"]
    assert (await run.events(other, key=keys["b"]))[-1][1] == "end"
    opened[0].close()
    for _ in range(100):  # the server notices the disconnect and frees the slot
        async with run.http.get(url, headers=_h(a)) as r:
            if r.status == 200:
                break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("stream slot never freed")
    opened[1].close()
    async with run.http.post(f"{run.url}/v1/tasks/{tid}/cancel", headers=_h(a)) as r:
        assert r.status == 204


@pytest.mark.alone  # 150,000 tokens run to their end inside the stall window's wait (ORCH-6258)
async def test_stalled_reader_is_cut_and_can_resume(
    start_orchestrator, mock_config, tenant_keys, caplog
):
    """ORCH-8015/1203: a reader that stops reading is cut after stream_stall_timeout_s
    (and counted, ORCH-8018); the task completes anyway and a reconnect with
    Last-Event-ID gets the rest."""
    auth, keys = tenant_keys("a")
    cfg = mock_config(
        auth=auth,
        limits={"stream_stall_timeout_s": 1.0, "stream_chunk_bytes": 4096},
        admission={"max_tokens_limit": 200_000},
        adapter_options={"token_delay_ms": 0, "ctx": 210_000},
    )
    run = await start_orchestrator(cfg)
    # ~50 bytes per token event: 7 MB, more than loopback socket buffers hold (4 MiB)
    resp = await run.submit(key=keys["a"], max_tokens=150_000)
    tid = (await resp.json())["task_id"]
    host, port = urlsplit(run.url).hostname, urlsplit(run.url).port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    request = (
        f"GET /v1/tasks/{tid}/stream HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {keys['a']}\r\n\r\n"
    )
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    caplog.set_level(logging.WARNING, logger="llama_orch.orchestratord")
    try:
        for _ in range(300):  # never read: the server must give up on us
            if any("cut" in r.getMessage() and tid in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("a stalled stream was never cut")
        # ORCH-8018: counted under the task's tenant, through the app's own stream counter
        assert counts(run.orch.metrics, "streams_cut_total") == {(("tenant", "a"),): 1}
        await run.until(lambda: run.orch.get(tid).terminal, 15)
        rec = run.orch.get(tid)
        assert rec.state == "completed" and rec.tokens_out == 150_000  # the task ran on
    finally:
        sock.close()
    rest = await run.events(tid, last_event_id=rec.event_count - 5, key=keys["a"])
    assert [e[0] for e in rest] == list(range(rec.event_count - 4, rec.event_count))
    assert rest[-1][1] == "end"


async def test_replay_chunks_are_bounded():
    """ORCH-8014: frames are joined into chunks of about max_chunk bytes, at least one."""
    req = GenerateRequest(task_id="t", prompt="p", max_tokens=1000, seed=1)
    rec = TaskRecord("t", "pool", "mock", "interactive", req, 1)
    for i in range(1000):
        rec.append(TokenEvent("x" * 20, i))
    rec.fail(ErrorCode.INTERNAL, "end", retriable=False)
    sizes = [len(c) async for c in rec.frames(0, 4096)]
    total = sum(len(f) for f in rec.frames_so_far())
    assert sum(sizes) == total and len(sizes) > 1
    frame = max(len(f) for f in rec.frames_so_far())
    assert max(sizes) < 4096 + frame
    assert [len(c) async for c in rec.frames(0, 1)] == [len(f) for f in rec.frames_so_far()]
