"""A replay of a finished task's log is bounded and cut like a live stream (ORCH-8022,
ORCH-8023: ORCH-8014, ORCH-8015 under both HTTP servers)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
from llama_orch.orchestratord.uvserve import CoalescingTransport
from llama_orch.orchestratord.writes import CoalescingWriter

from .test_security_metrics import counts

KIB = 1024


class _Raw:
    """The real transport or stream writer under a joining writer."""

    def __init__(self) -> None:
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("joining", [CoalescingTransport, CoalescingWriter])
async def test_a_turns_writes_go_through_at_64_kib_not_before(joining):
    """ORCH-8022: below 64 KiB a turn's writes wait for the turn's end (one write,
    ORCH-2766/2814); the write that brings them to 64 KiB goes out at once, with what
    was pending, and the turn's end writes only what came after it."""
    raw = _Raw()
    w = joining(raw, asyncio.get_running_loop())
    for _ in range(15):
        w.write(b"x" * 4 * KIB)  # 60 KiB pending
    assert raw.writes == []
    w.write(b"x" * 4 * KIB)  # 64 KiB: through, now
    assert raw.writes == [64 * KIB]
    w.write(b"y" * 100)
    assert raw.writes == [64 * KIB]
    await asyncio.sleep(0)
    assert raw.writes == [64 * KIB, 100]
    await asyncio.sleep(0)
    assert raw.writes == [64 * KIB, 100]  # nothing written twice, no empty write
    w.write(b"z" * 70 * KIB)  # one write past the mark: through at once, alone
    assert raw.writes == [64 * KIB, 100, 70 * KIB]


def stall_config(mock_config, tenant_keys, http_server: str) -> tuple[Any, dict[str, str]]:
    """Tenant ``a``'s key, a 1 s stall cut, a fast mock engine that can run 150,000
    tokens, under ``http_server``."""
    auth, keys = tenant_keys("a")
    cfg = mock_config(
        auth=auth,
        limits={"stream_stall_timeout_s": 1.0},
        admission={"max_tokens_limit": 200_000},
        adapter_options={"token_delay_ms": 0, "ctx": 210_000},
    )
    server = msgspec.structs.replace(cfg.server, http_server=http_server)
    return msgspec.structs.replace(cfg, server=server), keys


@pytest.mark.alone  # 150,000 tokens, then a reader that stalls (as ORCH-8015's own test)
@pytest.mark.parametrize("http_server", ["hypercorn", "uvicorn"])
async def test_a_finished_tasks_replay_to_a_reader_that_reads_nothing_is_cut(
    start_orchestrator, mock_config, tenant_keys, http_server
):
    """ORCH-8022: the stream of a task that has ended (its whole log a replay, ~7 MB,
    more than loopback buffers hold) to a reader that reads nothing is cut within
    ORCH-8015's time and counted (ORCH-8018), under either server. With the writes
    joined to the end of the turn the whole log went into the connection's buffer in
    one turn and the stream ended as if read: never cut, never counted."""
    cfg, keys = stall_config(mock_config, tenant_keys, http_server)
    run = await start_orchestrator(cfg)
    resp = await run.submit(key=keys["a"], max_tokens=150_000)
    tid = (await resp.json())["task_id"]
    await run.until(lambda: run.orch.get(tid).terminal, 60, "the task's end")
    rec = run.orch.get(tid)
    assert rec.state == "completed" and rec.tokens_out == 150_000
    loop = asyncio.get_running_loop()
    url = urlsplit(run.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (url.hostname, url.port))
        request = (
            f"GET /v1/tasks/{tid}/stream HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {keys['a']}\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        started = loop.time()
        while not counts(run.orch.metrics, "streams_cut_total"):
            assert loop.time() - started < 1.25 * 1.0 + 2.0, "the replay was never cut"
            await asyncio.sleep(0.05)
        assert counts(run.orch.metrics, "streams_cut_total") == {(("tenant", "a"),): 1}
    finally:
        sock.close()
