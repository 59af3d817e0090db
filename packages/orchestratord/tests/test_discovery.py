"""pool-managerds found by name resolution (ORCH-6230..6232, issue #22).

The resolver is the seam: :class:`FedResolver` answers what the test feeds it,
as a headless Service's A records change when pods come and go. The first
test follows scripted pool-managerds (``test_remote.FakePoolManagerd``,
mock replicas) on 127.0.0.1 and 127.0.0.2 with one port, like pod IPs with one
container port; the second follows two real ``pool-managerd`` processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config, parse_config
from llama_orch.orchestratord.discovery import client_name, resolve_addresses
from llama_orch.pool_managerd.engine import free_port

from .conftest import Running
from .test_remote import TOKEN, FakePoolManagerd, _replica, _run_task

A, B = "127.0.0.1", "127.0.0.2"


class FedResolver:
    """Answers the address set (or raises the error) the test set last."""

    def __init__(self) -> None:
        self.answer: set[str] | BaseException = set()
        self.calls = 0
        self.asked: list[tuple[str, int]] = []
        self._called = asyncio.Event()

    async def __call__(self, host: str, port: int) -> set[str]:
        self.asked.append((host, port))
        self.calls += 1
        self._called.set()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return set(self.answer)

    async def feed(self, answer: set[str] | BaseException) -> None:
        """Set the answer and wait until discovery has asked twice with it (applied)."""
        self.answer = answer
        target = self.calls + 2
        async with asyncio.timeout(30):
            while self.calls < target:
                self._called.clear()
                await self._called.wait()


def _config(port: int, pools: str = "rp", **extra: Any) -> Config:
    return msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 1.0},
            "auth": {"enabled": False},  # other features are tested without keys (ORCH-8001)
            "pools": [
                {
                    "id": pools,
                    "engine": "mock",
                    "model": "mock-model",
                    "adapter_options": {"token_delay_ms": 5, "slots": 2},
                }
            ],
            "pool_manager_discovery": [
                {
                    "name": "gpu",
                    "dns": "pool-managerd.llama-orch.svc.cluster.local",
                    "port": port,
                    "pools": [pools],
                    "token": TOKEN,
                    "interval_s": 0.05,
                    # the default lease (5 s): only discovery takes replicas away here,
                    # never a lease lost to a stalled event loop on a loaded machine
                    **extra,
                }
            ],
        },
        Config,
    )


async def _until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.02)


async def _post(orch: Running, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with orch.http.post(orch.url + path, json=body or {}) as r:
        return r.status, await r.json()


async def test_discovered_pool_managerds_come_and_go(start_orchestrator: Any) -> None:
    """ORCH-6230/6231/6232: an address that appears is followed under a lease and its
    replicas are placed; one that disappears leaves placement (`stopped`, `left
    discovery:`) and gets no command; a failed lookup keeps the set, "no such name"
    empties it, and then reload/reset answer 503 while a drain still works."""
    fakes = [FakePoolManagerd([_replica("rp-r0")]) for _ in (A, B)]
    try:
        await fakes[0].start(A)
        port = int(fakes[0].url.rsplit(":", 1)[1])
        await fakes[1].start(B, port)  # same port, another address: two pods
        resolver = FedResolver()
        resolver.answer = {A}
        orch: Running = await start_orchestrator(_config(port), resolver=resolver)
        pool = orch.orch.pools["rp"]
        ra, rb = f"{client_name('gpu', A)}/rp-r0", f"{client_name('gpu', B)}/rp-r0"
        assert ra == "gpu-127-0-0-1/rp-r0"
        await _until(lambda: ra in pool.states and pool.states[ra].ready)
        assert resolver.asked[0] == ("pool-managerd.llama-orch.svc.cluster.local", port)

        await resolver.feed({A, B})  # a pod was added
        await _until(lambda: rb in pool.states and pool.states[rb].ready)
        assert fakes[1].auth_seen[0] == f"Bearer {TOKEN}"

        await resolver.feed({B})  # A's pod is gone
        await _until(lambda: pool.states[ra].status == "stopped")
        assert (pool.states[ra].last_error or "").startswith("left discovery:")
        assert pool.states[rb].ready
        assert {(await _run_task(orch))["replica_id"] for _ in range(3)} == {rb}
        status, body = await _post(orch, "/v1/pools/rp/reset")
        assert status == 200 and body["replicas"] == [rb], body
        assert [c[0] for c in fakes[0].commands] == []  # A gets no command any more
        assert [c[0] for c in fakes[1].commands] == ["/v1/pools/rp/reset"]

        # A resolver failure other than "no such name" keeps what was found.
        await resolver.feed(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
        assert pool.states[rb].ready and pool.states[ra].status == "stopped"

        await resolver.feed(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        await _until(lambda: pool.states[rb].status == "stopped")
        assert not pool.ready_replicas()
        for action in ("reset", "reload"):
            body_in = {"new_model_ref": "m2"} if action == "reload" else {}
            status, body = await _post(orch, f"/v1/pools/rp/{action}", body_in)
            assert status == 503 and body["code"] == "POOL_UNAVAILABLE", body
            assert "pool_manager_discovery found no address" in body["message"]
        status, body = await _post(orch, "/v1/pools/rp/drain", {"deadline_ms": 0})
        assert status == 200, body

        await resolver.feed({A})  # a pod comes back (a new stream, a new snapshot)
        await _until(lambda: pool.states[ra].status == "draining")  # the pool stays drained
    finally:
        for fake in fakes:
            await fake.stop()


def test_discovery_config_is_validated() -> None:
    """ORCH-6230: known pools without endpoints, unique names, no name clash with
    `pool_managers`, a port; the defaults."""
    base = "pools: [{id: rp, engine: mock}, {id: ep, engine: mock, endpoints: ['mock://0']}]\n"
    d = "{name: gpu, dns: pmd, port: 8090, pools: [rp]}"
    cfg = parse_config(base + f"pool_manager_discovery: [{d}]\n")
    (found,) = cfg.pool_manager_discovery
    assert (found.interval_s, found.scheme, found.lease_ttl_s) == (10.0, "http", 5.0)
    for bad, why in (
        ("pool_manager_discovery: [{name: gpu, dns: pmd, port: 8090, pools: [nope]}]", "unknown"),
        ("pool_manager_discovery: [{name: gpu, dns: pmd, port: 8090, pools: [ep]}]", "endpoints"),
        (f"pool_manager_discovery: [{d}, {d}]", "unique"),
        ("pool_manager_discovery: [{name: gpu, dns: pmd, pools: [rp]}]", "port"),
        (
            f"pool_manager_discovery: [{d}]\n"
            "pool_managers: [{name: gpu-10-0-0-1, url: 'http://h:1', pools: [rp]}]",
            "starts with",
        ),
    ):
        with pytest.raises(msgspec.ValidationError, match=why):
            parse_config(base + bad + "\n")
    assert client_name("gpu", "fd00::1") == "gpu-fd00--1"


# ---------------------------------------------------------------- two real pool-managerds


def _pool_managerd() -> list[str]:
    exe = Path(sys.executable).parent / "pool-managerd"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "llama_orch.pool_managerd.main"]


@pytest.fixture
async def two_pool_managerds(tmp_path: Path) -> AsyncIterator[int]:
    """Two pool-managerd processes (no pools: the API and the registry stream) on
    127.0.0.1 and 127.0.0.2, one port; stopped by process group at teardown."""
    port = free_port()
    procs: list[asyncio.subprocess.Process] = []
    try:
        for host in (A, B):
            cfg = tmp_path / f"{host}.json"
            cfg.write_bytes(
                msgspec.json.encode({"pool_managerd": {"host": host, "port": port, "token": TOKEN}})
            )
            with (tmp_path / f"{host}.log").open("wb") as log:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *_pool_managerd(),
                        "--config",
                        str(cfg),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=log,
                        start_new_session=True,
                    )
                )
        yield port
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


async def test_two_real_pool_managerds_are_added_and_removed(
    start_orchestrator: Any, two_pool_managerds: int, caplog: pytest.LogCaptureFixture
) -> None:
    """ORCH-6231 with real pool-managerd processes: each discovered address gets a lease
    (its snapshot arrived) and the pool's commands (a reset, answered by the process:
    it manages no pool `p`, 404); a removed one gets none; with none left, 503."""
    caplog.set_level(logging.INFO, logger="llama_orch.orchestratord")
    port = two_pool_managerds
    assert A in await resolve_addresses("localhost", port)  # the default resolver, for real
    resolver = FedResolver()
    resolver.answer = {A, B}
    orch: Running = await start_orchestrator(
        _config(port, pools="p"), wait_ready=False, resolver=resolver
    )
    names = {client_name("gpu", A), client_name("gpu", B)}

    def leased() -> set[str]:
        return {
            n
            for n in names
            for r in caplog.records
            if r.getMessage() == f"pool-managerd {n}: lease granted, 0 replica(s)"
        }

    await _until(lambda: leased() == names, timeout=60)  # processes start under load
    status, body = await _post(orch, "/v1/pools/p/reset")
    assert status == 404 and "is not managed here" in body["message"], body

    await resolver.feed({B})
    gone = [r.getMessage() for r in caplog.records if "left discovery" in r.getMessage()]
    assert len(gone) == 1 and f"(pool-managerd {client_name('gpu', A)})" in gone[0], gone
    status, body = await _post(orch, "/v1/pools/p/reset")
    assert status == 404 and f"pool-managerd {client_name('gpu', B)}:" in body["message"]

    await resolver.feed(set())
    status, body = await _post(orch, "/v1/pools/p/reset")
    assert status == 503 and "found no address" in body["message"], body
