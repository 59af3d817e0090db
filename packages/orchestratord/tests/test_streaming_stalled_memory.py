"""A reader that stops reading for 30 s against a fast engine (ORCH-8015, ORCH-8016).

orchestratord runs as its own process (so its resident memory can be read from
``/proc``) with the mock adapter at ``token_delay_ms: 0``. Four clients open the
streams of long tasks and never read; their tasks produce about 6 MB of events
each, more than loopback socket buffers hold, so the server's writes block.
Meanwhile other tasks keep completing with normal readers for 30 s. The
resident memory must reach a plateau: what the stalled streams cost is their
tasks' own bounded logs plus at most one chunk each, not a slope.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from llama_orch.orchestratord.auth import hash_key

KEY = "llo_stall-test-" + "s" * 40
STALLED = 4
STALLED_TOKENS = 120_000
STALL_S = 30.0
MIN_OTHERS = 12  # other tasks completed while the readers stall (asserted > 10)
STALL_CAP_S = 150.0
PLATEAU_BOUND = 32 * 2**20  # ORCH-8016: growth while stalled, after their tasks ended
TOTAL_BOUND = 64 * 2**20  # ORCH-8016: growth beyond the stalled tasks' own logs


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONFIG = """\
server: {{host: 127.0.0.1, port: {port}, shutdown_grace_s: 1.0}}
auth:
  keys: [{{id: stall, role: tenant, tenant: t, hash: "{hash}"}}]
limits: {{stream_stall_timeout_s: 120}}
admission: {{max_tokens_limit: 150000, event_log_retention_s: 5, max_retained_tasks: 64}}
pools:
  - id: mock
    engine: mock
    model: mock-model
    endpoints: ["mock://0"]
    adapter_options: {{token_delay_ms: 0, slots: 8, ctx: 200000}}
"""


@pytest.fixture
def daemon(tmp_path):
    port = _free_port()
    cfg = tmp_path / "orchestratord.yaml"
    cfg.write_text(CONFIG.format(port=port, hash=hash_key(KEY)))
    exe = Path(sys.executable).with_name("orchestratord")
    log = (tmp_path / "orchestratord.log").open("wb")
    proc = subprocess.Popen([str(exe), "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _submit(http: aiohttp.ClientSession, url: str, tokens: int) -> str:
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "go", "max_tokens": tokens}
    async with http.post(url + "/v1/tasks", json=body, headers=auth) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["task_id"])


async def _read_all(http: aiohttp.ClientSession, url: str, tid: str) -> int:
    auth = {"Authorization": f"Bearer {KEY}"}
    n = 0
    async with http.get(f"{url}/v1/tasks/{tid}/stream", headers=auth) as r:
        async for chunk in r.content.iter_any():
            n += len(chunk)
    return n


async def _state(http: aiohttp.ClientSession, url: str, tid: str) -> str:
    async with http.get(f"{url}/v1/tasks/{tid}", headers={"Authorization": f"Bearer {KEY}"}) as r:
        return str((await r.json())["state"])


@pytest.mark.workspace_only
@pytest.mark.alone  # other tasks must finish within its 30 s window (ORCH-6240, ORCH-6258)
async def test_stalled_readers_keep_memory_bounded(daemon):
    """ORCH-8016: RSS plateaus under 4 stalled readers while a fast engine keeps working."""
    proc, url = daemon
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(
                    url + "/v1/pools/mock/health", headers={"Authorization": f"Bearer {KEY}"}
                ) as r:
                    if r.status == 200 and (await r.json())["ready"]:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        for _ in range(5):  # warm up allocator and caches
            wire = await _read_all(http, url, await _submit(http, url, 2000))
        base = _rss(proc.pid)

        socks = []
        stalled_ids = []
        for _ in range(STALLED):
            tid = await _submit(http, url, STALLED_TOKENS)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", int(url.rsplit(":", 1)[1])))
            req = (
                f"GET /v1/tasks/{tid}/stream HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {KEY}\r\n\r\n"
            )
            await loop.sock_sendall(sock, req.encode())
            socks.append(sock)  # never read from again
            stalled_ids.append(tid)
        started = time.monotonic()
        try:
            while not all([await _state(http, url, t) == "completed" for t in stalled_ids]):
                await asyncio.sleep(0.2)
            generated_s = time.monotonic() - started
            plateau_start = _rss(proc.pid)
            peak, completed = plateau_start, 0
            # The stall lasts STALL_S from the first stalled submit and, on a loaded
            # machine where generating the stalled tasks alone took longer, until
            # MIN_OTHERS other tasks ran beside the stalled readers (bounded).
            while (
                time.monotonic() - started < STALL_S or completed < MIN_OTHERS
            ) and time.monotonic() - started < STALL_CAP_S:
                await _read_all(http, url, await _submit(http, url, 2000))
                completed += 1
                peak = max(peak, _rss(proc.pid))
            end = _rss(proc.pid)
            stall_s = time.monotonic() - started
        finally:
            for sock in socks:
                sock.close()
    log_bytes = STALLED * STALLED_TOKENS * wire // 2000  # the stalled tasks' SSE bytes
    print(
        f"\nstalled readers: {STALLED} x {STALLED_TOKENS} tokens generated in {generated_s:.1f} s;"
        f" {completed} other tasks of 2000 tokens completed during the"
        f" {stall_s:.0f} s stall\n"
        f"RSS: base {base / 2**20:.1f} MiB, after stalled tasks ended"
        f" {plateau_start / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB,"
        f" end {end / 2**20:.1f} MiB (stalled tasks' logs: {log_bytes / 2**20:.0f} MiB on the wire)"
    )
    assert completed > 10  # the engine really kept working
    assert peak - plateau_start < PLATEAU_BOUND
    assert peak - base < log_bytes + TOTAL_BOUND
    assert proc.poll() is None and os.path.exists(f"/proc/{proc.pid}")
