"""orchestratord with ``state.durability`` on a real primary + replica (ORCH-2550, ORCH-2551).

A valkey-server primary and one replica (``--replicaof``) from the binary the
project provisions, on free loopback ports, stopped by PID at the end (also on
failure); orchestratord in-process with the mock engine. A 202 means the replica
has the task; with the replica paused, the submit answers 503 + Retry-After within
the configured timeout and nothing stays at the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
import valkey
from llama_orch.core.config import Config

pytestmark = pytest.mark.asyncio

# WAIT's bound: long enough that a replica on a loaded CI machine acknowledges in time,
# short enough that the paused-replica 503 comes quickly.
TIMEOUT_MS = 1000


def _replica_up(port: int) -> bool:
    with valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=2) as c:
        return c.info("replication").get("master_link_status") == "up"


def _acked(port: int) -> bool:
    """A write on the primary is acknowledged by its replica within 1 s (WAIT)."""
    with valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=3) as c:
        c.set("warm-up", "1")
        return int(c.wait(1, 1000)) >= 1


def _exists(port: int, key: str) -> bool:
    with valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=2) as c:
        return bool(c.exists(key))


async def test_202_waits_for_the_replica_and_503_without_it(
    start_orchestrator: Any, mock_config: Any, tmp_path: Path
) -> None:
    from llama_orch.state_valkey import EmbeddedServer, ServerUnavailable

    fast_sync = ["--repl-diskless-sync-delay", "0"]
    primary = EmbeddedServer(tmp_path / "primary", extra_args=fast_sync)
    replica: EmbeddedServer | None = None
    try:
        try:
            primary.start()
            replica = EmbeddedServer(
                tmp_path / "replica",
                extra_args=["--replicaof", "127.0.0.1", str(primary.port), *fast_sync],
            )
            replica.start()
        except ServerUnavailable as exc:
            if os.environ.get("REQUIRE_REAL_LLAMA") == "1":
                pytest.fail(f"REQUIRE_REAL_LLAMA=1 but no valkey-server could be started: {exc}")
            pytest.skip(f"no valkey-server: {exc}")
        assert replica.port is not None and replica.proc is not None
        deadline = time.monotonic() + 30
        while not _replica_up(replica.port):  # a child process: poll its state, bounded
            assert time.monotonic() < deadline, "replica link not up in 30 s"
            await asyncio.sleep(0.05)
        # The link is up before the replica acknowledges writes: a CI run's first submit
        # (WAIT bounded at 300 ms then) answered 503 right after the link came up.
        while not _acked(primary.port):
            assert time.monotonic() < deadline, "replica acknowledges no write in 30 s"
        doc = msgspec.to_builtins(mock_config(adapter_options={"token_delay_ms": 1}))
        doc["state"] = {
            "backend": "valkey",
            "url": primary.url,
            "key_prefix": "durable",
            "durability": {"wait_replicas": 1, "timeout_ms": TIMEOUT_MS},
        }
        run = await start_orchestrator(msgspec.convert(doc, Config))
        resp = await run.submit(max_tokens=2)
        assert resp.status == 202
        tid = (await resp.json())["task_id"]
        assert _exists(replica.port, f"{{durable}}:t:{tid}")  # on the replica at the 202

        again = str(uuid.uuid4())
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            resp = await run.submit(max_tokens=2, task_id=again)
            took = time.monotonic() - t0
            body = await resp.json()
            assert resp.status == 503, body
            assert int(resp.headers["Retry-After"]) >= 1
            assert body["code"] == "POOL_UNAVAILABLE" and body["retriable"] is True
            assert took < TIMEOUT_MS / 1000 + 4, took  # generous for a loaded machine
            assert not _exists(primary.port, f"{{durable}}:t:{again}")  # withdrawn
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        resp = await run.submit(max_tokens=2, task_id=again)  # the id is free
        assert resp.status == 202, await resp.json()
        events = await run.events(again)
        assert events[-1][1] == "end"
    finally:
        for server in (replica, primary):
            if server is not None:
                if server.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(server.proc.pid, signal.SIGCONT)
                server.stop(grace_s=3)
