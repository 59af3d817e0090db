"""The HTTP server choice (ORCH-2810..2813): hypercorn and uvicorn give the same
guarantees: TLS (ORCH-8030), the head bound (ORCH-8012), no ``Server`` header (a
``Date`` header, RFC 9110), the drain that ends open streams with their final event, the stream that
ends at its client's disconnect (ORCH-2751), each frame on the wire when written.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any

import aiohttp
import msgspec
import pytest
import trustme
from llama_orch.core.config import Config
from llama_orch.core.sse import SSEParser
from llama_orch.orchestratord.errors import StartupError
from llama_orch.orchestratord.serve import _bind, serve

SERVERS = ["hypercorn", "uvicorn"]
_SSE = {"Accept": "text/event-stream"}


def _on(cfg: Config, http_server: str, **server: Any) -> Config:
    changed = msgspec.structs.replace(cfg.server, http_server=http_server, **server)
    return msgspec.structs.replace(cfg, server=changed)


def _addr(url: str) -> tuple[str, int]:
    host, port = url.split("://")[1].split(":")
    return host, int(port)


@pytest.mark.parametrize("http_server", SERVERS)
async def test_tls_serves_a_stream(start_orchestrator, mock_config, tmp_path, http_server):
    """ORCH-2811, ORCH-8030: a stream over TLS with a generated certificate; an
    unusable certificate stops the start."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    cfg = mock_config(adapter_options={"token_delay_ms": 1})
    run = await start_orchestrator(
        _on(cfg, http_server, certfile=str(certfile), keyfile=str(keyfile))
    )
    assert run.url.startswith("https://")
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            run.url + "/v1/tasks",
            json={"prompt": "hi", "max_tokens": 3},
            headers=_SSE,
            ssl=trusting,
        ) as r:
            body = await r.read()
        assert r.status == 200 and b"event: end" in body
        assert "Server" not in r.headers and "Date" in r.headers
    (tmp_path / "bad.pem").write_text("not a certificate")
    bad = str(tmp_path / "bad.pem")
    with pytest.raises(StartupError, match="TLS"):
        await serve(_on(cfg, http_server, certfile=bad, keyfile=bad))


@pytest.mark.parametrize("http_server", SERVERS)
async def test_an_over_long_head_gets_431(start_orchestrator, mock_config, http_server):
    """ORCH-2812, ORCH-8012: a complete head beyond the bound gets the 431 envelope; a
    head still arriving beyond it gets the server's 431 and the connection closes."""
    cfg = _on(mock_config(limits={"max_header_bytes": 4096}), http_server)
    run = await start_orchestrator(cfg)
    host, port = _addr(run.url)
    line = "GET /v1/capabilities HTTP/1.1\r\nHost: x\r\n"
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{line}X-Padding: {'p' * 8000}\r\n\r\n".encode())
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"code":"HEADERS_TOO_LARGE"' in answer
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(line.encode())
    answer = b""
    for _ in range(8):  # 2 KB at a time: the bound is crossed on the third write
        await asyncio.sleep(0.05)
        try:
            writer.write(f"X-Padding: {'p' * 2000}\r\n".encode())
            await writer.drain()
        except ConnectionError:
            break
        with contextlib.suppress(TimeoutError):
            answer += await asyncio.wait_for(reader.read(65536), 0.2)
        if answer:
            break
    with contextlib.suppress(TimeoutError):
        answer += await asyncio.wait_for(reader.read(65536), 1)  # then the close: b""
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"x-correlation-id" not in answer.lower()  # the application never saw it
    async with run.http.get(run.url + "/v1/capabilities") as r:
        assert r.status == 200 and "Server" not in r.headers and "Date" in r.headers


@pytest.mark.parametrize("http_server", SERVERS)
async def test_a_drain_ends_open_streams_with_their_final_event(
    start_orchestrator, mock_config, http_server
):
    """ORCH-2813: on the shutdown trigger the open stream gets its task's final event
    and the response's end before the listener closes."""
    cfg = _on(mock_config(adapter_options={"token_delay_ms": 20}), http_server)
    run = await start_orchestrator(cfg)
    assert run.stop is not None
    resp = await run.http.post(
        run.url + "/v1/tasks", json={"prompt": "x", "max_tokens": 2000}, headers=_SSE
    )
    assert resp.status == 200
    parser, seen = SSEParser(), []
    stopped = False
    async for chunk in resp.content.iter_any():
        seen += list(parser.feed(chunk))
        if not stopped and any(m.event == "token" for m in seen):
            run.stop.set()  # the stream is running: shut down
            stopped = True
    # the task's last event: cut by the shutdown grace (an `error` frame) or ended
    assert stopped and seen[-1].event in ("end", "error"), [m.event for m in seen[-3:]]
    assert resp.content.at_eof()  # the chunked body ended, not a cut


@pytest.mark.parametrize("http_server", SERVERS)
async def test_a_stream_ends_at_its_clients_disconnect(
    start_orchestrator, mock_config, http_server
):
    """ORCH-2813, ORCH-2751: the stream's writer ends when its client goes away (the
    tenant's one stream is free again) and each frame reached the client when written."""
    cfg = mock_config(limits={"max_streams_per_tenant": 1}, adapter_options={"token_delay_ms": 20})
    run = await start_orchestrator(_on(cfg, http_server))
    host, port = _addr(run.url)
    reader, writer = await asyncio.open_connection(host, port)
    body = b'{"prompt": "x", "max_tokens": 2000}'  # 40 s of tokens
    writer.write(
        b"POST /v1/tasks HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    assert head.startswith("http/1.1 200") and "server:" not in head and "date:" in head
    tid = head.split("x-task-id: ")[1].split("\r\n")[0]
    got = b""
    while got.count(b"event: token") < 3:  # tokens arrive one by one, 20 ms apart
        got += await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    for _ in range(200):  # bounded poll (the disconnect has no event to await here)
        async with run.http.post(
            run.url + "/v1/tasks", json={"prompt": "x", "max_tokens": 1}, headers=_SSE
        ) as again:
            if again.status == 200:
                second = again.headers["X-Task-Id"]
                break
            assert again.status == 429
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the dropped stream still counts after 10 s")
    for task_id in (tid, second):
        async with run.http.post(f"{run.url}/v1/tasks/{task_id}/cancel") as r:
            assert r.status == 204


async def test_accepted_connections_get_tcp_nodelay():
    """ORCH-2816: the listener's proto is TCP, so asyncio sets TCP_NODELAY on what it
    accepts (with ``proto`` 0 it does not: Nagle + delayed ACK, ~40 ms a response)."""
    sock = _bind("127.0.0.1", 0)
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            raw = transport.get_extra_info("socket")
            seen.set_result(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    assert await asyncio.wait_for(seen, 5) != 0
    writer.close()
    server.close()
    await server.wait_closed()


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_uvicorn_writes_of_one_turn_go_out_as_one():
    """ORCH-2814: head, body and terminator written in one turn are one write at the
    turn's end; ``close`` writes what is pending first."""
    from llama_orch.orchestratord.uvserve import CoalescingTransport

    raw = _Recorder()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"5\r\nhello\r\n")
    t.write(b"0\r\n\r\n")
    assert raw.writes == []
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]
    t.write(b"late")
    t.close()
    assert raw.writes[-1] == b"late" and raw.closed


async def test_uvicorn_tells_the_disconnect_through_the_requests_app_queue():
    """ORCH-2815: under uvicorn a request's scope carries an AppQueue that gets
    ``http.disconnect`` when its client goes away mid-response (no task waits on it)."""
    from llama_orch.orchestratord.leanconn import APP_QUEUE, AppQueue
    from llama_orch.orchestratord.uvserve import serve_uvicorn

    seen: list[str] = []
    gone = asyncio.Event()
    started = asyncio.Event()

    async def app(scope, receive, send):
        queue = scope[APP_QUEUE]
        assert isinstance(queue, AppQueue)
        queue.watch(lambda m: (seen.append(m["type"]), gone.set()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        started.set()
        await gone.wait()

    sock = _bind("127.0.0.1", 0)
    stop = asyncio.Event()
    served = asyncio.create_task(
        serve_uvicorn(app, sock, max_head_bytes=8192, ssl_context=None, shutdown_trigger=stop.wait)
    )
    reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(started.wait(), 5)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.close()
    await asyncio.wait_for(gone.wait(), 5)
    assert "http.disconnect" in seen
    stop.set()
    await asyncio.wait_for(served, 10)
