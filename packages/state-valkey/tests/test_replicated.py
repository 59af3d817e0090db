"""Durability before the 202 and Sentinel failover on real servers (ORCH-2550..2555).

Replicated topologies on loopback: a primary, replicas (``--replicaof``) and one
Sentinel, all the binary the project provisions (:func:`find_server_binary`), each
on a free port under the test's directory and stopped by its PID (process group)
at the end, also on failure. Sentinel timings are small (down-after 1 s) so the
failover test stays cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import valkey
from llama_orch.core.config import StateDurability, StateSentinel
from llama_orch.core.state_store import (
    Dispatched,
    PoolPolicy,
    SlotView,
    StoreConfig,
    StoreUnavailable,
    TaskSpec,
)
from llama_orch.state_valkey import (
    EmbeddedServer,
    ServerUnavailable,
    ValkeyStateStore,
    find_server_binary,
)
from llama_orch.state_valkey.server import _free_port, _ping

pytestmark = pytest.mark.asyncio
CFG = StoreConfig(pools={"p": PoolPolicy(capacity=100)})


def command(port: int, *args: object) -> object:
    """One command on a short-lived connection (closed at once)."""
    with valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=5) as c:
        return c.execute_command(*args)


def _link_up(port: int) -> bool:
    info = command(port, "INFO", "replication")
    return isinstance(info, dict) and info.get("master_link_status") == "up"


def wait_for(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Child processes have no event to await: poll ``check`` with a bound."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, valkey.exceptions.ValkeyError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not within {timeout_s:g}s")


class Topology:
    """A primary, ``replicas`` replicas and optionally one Sentinel."""

    def __init__(self, root: Path, replicas: int = 1, sentinel: bool = False) -> None:
        self.root = root
        self.binary = find_server_binary()
        # replicas sync at once (the default diskless sync waits 5 s for more replicas)
        self.primary = EmbeddedServer(
            root / "primary", binary=self.binary, extra_args=["--repl-diskless-sync-delay", "0"]
        )
        self.replicas: list[EmbeddedServer] = []
        self._n = replicas
        self._want_sentinel = sentinel
        self.sentinel_port: int | None = None
        self._sentinel: subprocess.Popen[bytes] | None = None

    def start(self) -> Topology:
        self.primary.start()
        for i in range(self._n):
            r = EmbeddedServer(
                self.root / f"replica{i}",
                binary=self.binary,
                extra_args=[
                    "--replicaof",
                    "127.0.0.1",
                    str(self.primary.port),
                    "--repl-diskless-sync-delay",
                    "0",
                ],
            )
            self.replicas.append(r)
            r.start()
        for r in self.replicas:
            assert r.port is not None
            port = r.port
            wait_for(
                partial(_link_up, port),
                30,
                "replica link up",
            )
        if self._want_sentinel:
            self._start_sentinel()
        return self

    def _start_sentinel(self) -> None:
        d = self.root / "sentinel"
        d.mkdir(parents=True, exist_ok=True)
        self.sentinel_port = port = _free_port()
        conf = d / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d / 'sentinel.log'}\n"
            f"sentinel monitor llorch 127.0.0.1 {self.primary.port} 1\n"
            "sentinel down-after-milliseconds llorch 1000\n"
            "sentinel failover-timeout llorch 5000\n"
            "sentinel parallel-syncs llorch 2\n"
        )
        binary, env = self.binary
        self._sentinel = subprocess.Popen(
            [str(binary), str(conf), "--sentinel"],
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: _ping(port), 30, "sentinel PING")
        # it must know every replica before a failover can promote one
        wait_for(
            lambda: len(command(port, "SENTINEL", "REPLICAS", "llorch")) >= len(self.replicas),  # type: ignore[arg-type]
            30,
            "sentinel knows the replicas",
        )

    def sentinel_master(self) -> int:
        """The primary's port as the Sentinel names it now."""
        assert self.sentinel_port is not None
        reply = command(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "llorch")
        return int(reply[1])  # type: ignore[index]

    def close(self) -> None:
        if self._sentinel is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._sentinel.pid, signal.SIGKILL)
            self._sentinel.wait()
        for server in [*self.replicas, self.primary]:
            if server.proc is not None:  # SIGCONT first: a stopped server ignores SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.proc.pid, signal.SIGCONT)
            server.stop(grace_s=3)


@pytest.fixture
def topology(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Topology]:
    """``@pytest.mark.parametrize("topology", [(replicas, sentinel)], indirect=True)``."""
    replicas, sentinel = request.param
    topo = Topology(tmp_path, replicas=replicas, sentinel=sentinel)
    try:
        topo.start()
    except ServerUnavailable as exc:
        topo.close()
        if os.environ.get("REQUIRE_REAL_LLAMA") == "1":
            pytest.fail(f"REQUIRE_REAL_LLAMA=1 but no valkey-server could be started: {exc}")
        pytest.skip(f"no valkey-server: {exc}")
    try:
        yield topo
    finally:
        topo.close()


def _spec(tid: str) -> TaskSpec:
    return TaskSpec(task_id=tid, pool="p", priority="batch", tenant="a")


async def _store(url: str, **kw: object) -> ValkeyStateStore:
    store = ValkeyStateStore(url, key_prefix="dur", **kw)  # type: ignore[arg-type]
    await store.start()
    await store.configure(CFG)
    return store


def _has(port: int, tid: str) -> bool:
    return bool(command(port, "EXISTS", f"{{dur}}:t:{tid}"))


@pytest.mark.parametrize("topology", [(1, False)], indirect=True)
async def test_wait_replicas_holds_the_202_until_a_replica_has_the_task(
    topology: Topology,
) -> None:
    """ORCH-2550/2551: with ``wait_replicas: 1`` submit returns only once the replica
    acknowledged the admission (a paused replica holds it; it is on the replica the
    moment submit returns); with the replica paused past ``timeout_ms`` the admission
    is withdrawn (503 + Retry-After, nothing left at the store, the id reusable),
    also when a dispatcher took the task during the wait."""
    primary, replica = topology.primary, topology.replicas[0]
    assert primary.port is not None and replica.port is not None and replica.proc is not None
    slow = await _store(primary.url, durability=StateDurability(wait_replicas=1, timeout_ms=20000))
    fast = await _store(primary.url, durability=StateDurability(wait_replicas=1, timeout_ms=300))
    aof = await _store(
        primary.url, durability=StateDurability(wait_replicas=1, wait_aof=True, timeout_ms=20000)
    )
    plain = await _store(primary.url)  # another instance, no durability: a dispatcher
    try:
        await slow.submit(_spec("t0"))
        assert _has(replica.port, "t0")  # no settling time: WAIT returned after the ack
        await aof.submit(_spec("t-aof"))  # WAITAOF 1 1: both AOFs fsynced
        assert _has(replica.port, "t-aof")

        os.kill(replica.proc.pid, signal.SIGSTOP)
        pending = asyncio.create_task(slow.submit(_spec("t1")))
        done, _ = await asyncio.wait({pending}, timeout=0.8)
        assert not done, "the 202 came before the replica could acknowledge"
        t0 = time.monotonic()
        os.kill(replica.proc.pid, signal.SIGCONT)
        await asyncio.wait_for(pending, 20)
        assert _has(replica.port, "t1") and time.monotonic() - t0 < 10

        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await fast.submit(_spec("t2"))
            took = time.monotonic() - t0
            assert info.value.status_code == 503 and info.value.retry_after_ms >= 1000
            assert "not accepted" in str(info.value)
            assert took < 5, took  # 300 ms timeout; generous for a loaded machine
            assert await plain.task("t2") is None  # withdrawn at the primary
            assert await plain.client.hget("{dur}:inflight", "a") == b"3"  # t0, t-aof, t1

            # a dispatcher takes the task while its admission waits: withdrawn anyway,
            # its slot back and its owner told to stop
            await plain.set_replicas(
                "p", [SlotView(replica_id="r", set_key="A", ready=True, slots=9)]
            )
            older = [await plain.dispatch("p", "other", 60_000) for _ in range(3)]
            assert [d.task.task_id for d in older if isinstance(d, Dispatched)] == [
                "t0",
                "t-aof",
                "t1",
            ]
            cursor = await plain.control_cursor("other")
            racing = asyncio.create_task(fast.submit(_spec("t3")))
            got = None
            while got is None and not racing.done():
                d = await plain.dispatch("p", "other", 60_000)
                got = d if isinstance(d, Dispatched) else None
            assert got is not None and got.task.task_id == "t3"
            with pytest.raises(StoreUnavailable):
                await racing
            _, msgs = await plain.wait_control("other", cursor, 1.0)
            assert [(m.op, m.task_id) for m in msgs] == [("cancel", "t3")]
            assert await plain.busy("p") == {"r": 3} and await plain.task("t3") is None
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        await fast.submit(_spec("t2"))  # the withdrawn id is free again
        assert _has(replica.port, "t2")
    finally:
        for s in (slow, fast, aof, plain):
            await s.close()


@pytest.mark.parametrize("topology", [(2, True)], indirect=True)
async def test_sentinel_failover_keeps_acknowledged_tasks_and_admits_again(
    topology: Topology,
) -> None:
    """ORCH-2553/2554: through Sentinel, tasks admitted with ``wait_replicas: 1``
    are still there after ``kill -9`` of the primary and the promotion of a replica;
    submits answer 503 while there is no primary and succeed again through the
    promoted one within a bounded time."""
    assert topology.sentinel_port is not None and topology.primary.proc is not None
    sentinel = StateSentinel(
        addresses=[f"127.0.0.1:{topology.sentinel_port}"], master_name="llorch"
    )
    store = ValkeyStateStore(
        key_prefix="dur",
        sentinel=sentinel,
        durability=StateDurability(wait_replicas=1, timeout_ms=2000),
    )
    await store.start()
    try:
        await store.configure(CFG)
        before = [f"before-{i}" for i in range(5)]
        for tid in before:
            await store.submit(_spec(tid))
        old = topology.primary.port
        os.killpg(topology.primary.proc.pid, signal.SIGKILL)  # kill -9 of the primary
        topology.primary.proc.wait()
        t0 = time.monotonic()
        refused = 0
        n = 0
        while True:
            assert time.monotonic() - t0 < 40, (
                f"no admission through a new primary ({refused} refused)"
            )
            try:
                await store.submit(_spec(f"after-{n}"))
                break
            except StoreUnavailable:
                refused += 1
                n += 1
                await asyncio.sleep(0.2)  # a client's retry back-off
        back = time.monotonic() - t0
        assert topology.sentinel_master() != old
        assert refused >= 1  # there was a window without a primary, answered 503
        for tid in before:
            view = await store.task(tid)
            assert view is not None and view.state == "queued", tid
        print(f"failover: first admission {back:.2f}s after kill -9, {refused} refused")
    finally:
        await store.close()
