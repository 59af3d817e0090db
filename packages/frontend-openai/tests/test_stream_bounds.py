"""The facades' streams count against the tenant's open streams and are cut when their
reader stalls (ORCH-9117: ORCH-8013 and ORCH-8015 for the OpenAI and Anthropic streams)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ADMIN_KEY, TENANT_KEY, mock_config

CHAT = [{"role": "user", "content": "hi"}]


def _config(**kw: Any) -> Any:
    limits = kw.pop("limits")
    cfg = msgspec.to_builtins(mock_config(**kw))
    cfg["limits"] = limits
    return msgspec.convert(cfg, type(mock_config()))


async def _series(http: aiohttp.ClientSession, url: str, name: str) -> dict[str, float]:
    async with http.get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
        text = await r.text()
    return {
        s.labels["tenant"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    }


async def test_a_facade_stream_beyond_the_tenants_limit_is_refused_before_admission(
    start_daemon,
):
    """ORCH-9117: with one stream allowed, an open OpenAI stream makes a second OpenAI
    stream, an Anthropic stream and a task-API stream of the same tenant 429 (the
    API's own shape, `quota`), nothing enqueued; a non-streamed call still runs; after
    the first stream ends a stream is admitted again."""
    d = await start_daemon(
        _config(adapter_options={"token_delay_ms": 20}, limits={"max_streams_per_tenant": 1})
    )
    auth = {"Authorization": f"Bearer {TENANT_KEY}"}
    async with aiohttp.ClientSession() as http:
        body = {"model": "mock-model", "max_tokens": 60, "stream": True, "messages": CHAT}
        first = await http.post(d.base + "/chat/completions", json=body, headers=auth)
        assert first.status == 200
        await first.content.readline()  # it is open
        tasks = len(d.orch.tasks)
        async with http.post(d.base + "/chat/completions", json=body, headers=auth) as r:
            err = await r.json()
            assert r.status == 429 and r.headers["x-llorch-policy-label"] == "quota", err
            assert err["error"]["type"] and "streams open" in err["error"]["message"]
        claude = {"x-api-key": TENANT_KEY}
        async with http.post(
            d.base + "/messages", json={**body, "max_tokens": 5}, headers=claude
        ) as r:
            assert r.status == 429 and (await r.json())["type"] == "error"
        async with http.post(
            d.url + "/v1/tasks", json={"prompt": "x", "max_tokens": 3},
            headers={**auth, "Accept": "text/event-stream"},
        ) as r:  # fmt: skip
            assert r.status == 429
        assert len(d.orch.tasks) == tasks  # nothing enqueued by the refusals
        whole = {"model": "mock-model", "max_tokens": 2, "messages": CHAT}
        async with http.post(d.base + "/chat/completions", json=whole, headers=auth) as r:
            assert r.status == 200  # not a stream: not bounded by it
        assert (await _series(http, d.url, "streams_refused_total")).get("acme") == 3
        rest = await first.read()
        first.release()
        assert b"[DONE]" in rest
        for _ in range(100):  # the closed stream is counted out when its writer returns
            async with http.post(d.base + "/chat/completions", json=body, headers=auth) as r:
                if r.status == 200:
                    await r.read()
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no stream admitted after the first one ended")


@pytest.mark.alone  # ~40,000 tokens written at once until the socket buffers fill
async def test_a_stalled_facade_reader_is_cut_and_its_task_canceled(start_daemon):
    """ORCH-9117: an OpenAI stream whose client stops reading is cut after
    `stream_stall_timeout_s`, counted in streams_cut_total, and its task is canceled
    (ORCH-9113) instead of running on for nobody."""
    cfg = _config(
        adapter_options={"token_delay_ms": 0, "ctx": 210_000},
        admission={"max_tokens_limit": 200_000},
        limits={"stream_stall_timeout_s": 1.0, "stream_chunk_bytes": 4096},
    )
    d = await start_daemon(cfg)
    host, port = urlsplit(d.url).hostname, urlsplit(d.url).port
    body = msgspec.json.encode(
        {"model": "mock-model", "max_tokens": 150_000, "stream": True, "messages": CHAT}
    )
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TENANT_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, request)
        for _ in range(300):  # never read: the server must give up on us
            recs = [t for t in d.orch.tasks.records() if t.api == "openai"]
            if recs and recs[0].terminal:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("a stalled facade stream was never cut")
        (rec,) = recs
        assert rec.state == "canceled" and rec.tokens_out < 150_000, (rec.state, rec.tokens_out)
        async with aiohttp.ClientSession() as http:
            assert (await _series(http, d.url, "streams_cut_total")) == {"acme": 1.0}
    finally:
        sock.close()
