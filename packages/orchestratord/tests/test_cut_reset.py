"""A stream cut for a stalled reader ends its connection at once with a reset, under
either server; a stream that ends normally keeps its connection (ORCH-8024, ORCH-8025)."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import pytest

from .test_replay_bounds import stall_config
from .test_security_metrics import counts

_ESTABLISHED, _CLOSE = 1, 7  # tcpi_state values (Linux include/net/tcp_states.h)


def _state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


async def _stream_request(run, tid: str, key: str) -> socket.socket:
    """A raw client socket that sent the stream's GET and has read nothing."""
    loop = asyncio.get_running_loop()
    url = urlsplit(run.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (url.hostname, url.port))
    request = (
        f"GET /v1/tasks/{tid}/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    return sock


@pytest.mark.alone  # a stalled reader's cut (timing), as ORCH-8015's own test
@pytest.mark.parametrize("http_server", ["hypercorn", "uvicorn"])
async def test_a_cut_stream_resets_its_connection(
    start_orchestrator, mock_config, tenant_keys, http_server
):
    """ORCH-8024: the client of a cut stream has read nothing; its socket is reset right
    after the cut (before: it stayed established, the server's close waiting for the
    bytes it held to be read). A normally ended stream's connection stays open."""
    cfg, keys = stall_config(mock_config, tenant_keys, http_server)
    run = await start_orchestrator(cfg)
    loop = asyncio.get_running_loop()
    # a normal end first: a short task read to its end keeps its (keep-alive) connection
    short = (await (await run.submit(key=keys["a"], max_tokens=3)).json())["task_id"]
    await run.until(lambda: run.orch.get(short).terminal, 30, "the short task's end")
    sock = await _stream_request(run, short, keys["a"])
    try:
        got = b""
        while not got.endswith(b"0\r\n\r\n"):  # the chunked body's end
            got += await loop.sock_recv(sock, 65536)
        assert b"event: end" in got
        await asyncio.sleep(0.3)
        assert _state(sock) == _ESTABLISHED
    finally:
        sock.close()
    # then a cut: a finished 150,000-token task's log to a reader that reads nothing
    tid = (await (await run.submit(key=keys["a"], max_tokens=150_000)).json())["task_id"]
    await run.until(lambda: run.orch.get(tid).terminal, 60, "the task's end")
    sock = await _stream_request(run, tid, keys["a"])
    try:
        started = loop.time()
        while not counts(run.orch.metrics, "streams_cut_total"):
            assert loop.time() - started < 1.25 + 2.0, "the stream was never cut"
            await asyncio.sleep(0.05)
        for _ in range(40):  # the reset travels over loopback in well under 2 s
            if _state(sock) == _CLOSE:
                break
            await asyncio.sleep(0.05)
        assert _state(sock) == _CLOSE, f"tcp state {_state(sock)} after the cut"
        with pytest.raises(ConnectionResetError):
            while await loop.sock_recv(sock, 1 << 20):
                pass
    finally:
        sock.close()
