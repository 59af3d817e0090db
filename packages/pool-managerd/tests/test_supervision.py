"""Supervision against a fake engine: restarts, backoff, breaker, hangs, preload, reload."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from llama_orch.core.replica import ReplicaState
from llama_orch.pool_managerd import PoolManager
from llama_orch.pool_managerd._preload import (
    check_gpu_headroom,
    check_ram_headroom,
    mem_available_bytes,
)
from llama_orch.pool_managerd._supervise import Backoff, CircuitBreaker
from llama_orch.pool_managerd.errors import (
    PreloadError,
    ProvisionError,
    ReloadError,
    VerificationError,
)

from .test_pool import Recorder, _config

Alive = Callable[[int], bool]
FAST = {
    "restart_backoff_initial_s": 0.05,
    "restart_backoff_max_s": 0.4,
    "health_probe_interval_s": 0.2,
    "health_probe_timeout_s": 1.0,
    "health_probe_failures": 3,
}


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    """ORCH-POOL-3007: exponential, capped, jittered within ±jitter."""
    b = Backoff(1.0, 8.0, jitter=0.0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.next() == 1.0
    lo, hi = Backoff(1.0, 8.0, 0.2, rng=lambda: 0.0), Backoff(1.0, 8.0, 0.2, rng=lambda: 1.0)
    assert lo.next() == pytest.approx(0.8) and hi.next() == pytest.approx(1.2)


def test_breaker_opens_after_n_failures_within_the_window() -> None:
    """ORCH-POOL-3015: N failures inside the window open it; older ones age out."""
    now = [0.0]
    br = CircuitBreaker(3, 10.0, clock=lambda: now[0])
    assert not br.record_failure()
    now[0] = 11.0  # the first failure leaves the window
    assert not br.record_failure()
    now[0] = 12.0
    assert not br.record_failure()
    now[0] = 13.0
    assert br.record_failure() and br.open
    br.reset()
    assert not br.open and not br.failures


def test_ram_headroom_from_meminfo() -> None:
    """ORCH-POOL-3018: MemAvailable vs model size x factor."""
    meminfo = "MemTotal: 8000000 kB\nMemAvailable:    1024 kB\n"
    assert mem_available_bytes(meminfo) == 1024 * 1024
    check_ram_headroom(512 * 1024, 1.5, meminfo)
    with pytest.raises(PreloadError, match="MemAvailable 1 MiB"):
        check_ram_headroom(1024 * 1024, 1.2, meminfo)
    check_ram_headroom(10**12, 0, meminfo)  # factor 0 = off
    check_ram_headroom(10**12, 1.2, "no such line")


class FakeNvml:
    def __init__(self, free: dict[int, int]) -> None:
        self.free = free
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, h: int) -> object:
        return type("Mem", (), {"free": self.free[h]})()


def test_vram_headroom_through_nvml_per_device_of_the_mask() -> None:
    """ORCH-POOL-3018, ORCH-POOL-3006: only devices in the mask are checked."""
    nvml = FakeNvml({0: 100 << 20, 1: 10 << 20})
    check_gpu_headroom("0", 50 << 20, nvml)
    with pytest.raises(PreloadError, match="GPU 1"):
        check_gpu_headroom("0,1", 50 << 20, nvml)
    assert nvml.calls == ["init", "shutdown", "init", "shutdown"]


async def test_a_killed_engine_is_restarted_on_a_new_port(
    fake_engine: Path,
    fake_model: Path,
    fake_adapter: object,
    pid_alive: Alive,
    reap_pids: list[int],
) -> None:
    """ORCH-POOL-3007, ORCH-POOL-3009: crash → failed with backoff_ms → Ready again."""
    rec = Recorder()
    async with PoolManager(_config(fake_engine, fake_model, **FAST), on_change=rec) as pm:
        victim = pm.replicas()[0]
        assert victim.pid is not None
        reap_pids.append(victim.pid)
        os.kill(victim.pid, signal.SIGKILL)
        await rec.wait_for(
            lambda s: s.replica_id == victim.replica_id and s.restarts == 1 and s.ready
        )
        failed = [
            s for s in rec.states if s.replica_id == victim.replica_id and s.status == "failed"
        ]
        assert failed[0].last_error == f"engine exited with code {-signal.SIGKILL}"
        assert failed[0].backoff_ms > 0
        back = pm.replicas()[0]
        assert back.pid != victim.pid and back.base_url != victim.base_url
        assert back.last_error is None and back.backoff_ms == 0 and pid_alive(back.pid or 0)
        assert pm.counters.crashes == 1 and pm.counters.restarts == 1
        assert pm.counters.preload_ok == 3
    assert not pid_alive(back.pid or 0)


async def test_an_engine_failing_at_start_opens_the_breaker(
    fake_engine: Path,
    fake_model: Path,
    fake_adapter: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ORCH-POOL-3015: restarts back off and stop after breaker_failures."""
    monkeypatch.setenv("FAKE_ENGINE_MODE", "crash")
    rec = Recorder()
    cfg = _config(fake_engine, fake_model, replicas=1, breaker_failures=4, **FAST)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with PoolManager(cfg, on_change=rec) as pm:
        await rec.wait_for(lambda s: s.circuit_open, timeout=30)
        took = loop.time() - t0
        (s,) = pm.replicas()
        assert s.status == "failed" and s.circuit_open and s.restarts == 3
        assert s.last_error is not None and s.last_error.startswith("circuit open: 4 failures")
        assert "exited with 3" in s.last_error
        delays = [x.backoff_ms for x in rec.states if x.status == "failed" and not x.circuit_open]
        assert len(delays) == 3 and delays[0] < delays[-1]  # exponential
        assert pm.counters.breaker_opened == 1 and pm.counters.start_failures == 4
        await asyncio.sleep(0.5)
        assert pm.replicas()[0].restarts == 3  # no more restarts
    assert took < 20


async def test_a_hung_engine_is_killed_and_replaced(
    fake_engine: Path,
    fake_model: Path,
    fake_adapter: object,
    pid_alive: Alive,
    reap_pids: list[int],
) -> None:
    """ORCH-POOL-3016: SIGSTOP → consecutive probe failures → group SIGKILL → restart."""
    rec = Recorder()
    cfg = _config(fake_engine, fake_model, replicas=1, **{**FAST, "health_probe_timeout_s": 0.3})
    async with PoolManager(cfg, on_change=rec) as pm:
        (hung,) = pm.replicas()
        assert hung.pid is not None
        reap_pids.append(hung.pid)
        os.kill(hung.pid, signal.SIGSTOP)
        await rec.wait_for(lambda s: s.restarts == 1 and s.ready, timeout=20)
        assert not pid_alive(hung.pid)
        failed = next(s for s in rec.states if s.status == "failed")
        assert "engine unresponsive" in str(failed.last_error)
        assert "3 consecutive liveness probes failed" in str(failed.last_error)
        assert pm.counters.unresponsive_kills == 1


async def test_a_slow_but_answering_engine_does_not_flap(
    fake_engine: Path, fake_model: Path, fake_adapter: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-POOL-3016: a busy engine answering /health slowly stays Ready."""
    monkeypatch.setenv("FAKE_ENGINE_MODE", "slow-health")
    rec = Recorder()
    cfg = _config(fake_engine, fake_model, replicas=1, startup_timeout_s=30.0, **FAST)
    async with PoolManager(cfg, on_change=rec) as pm:
        assert pm.replicas()[0].ready
        await asyncio.sleep(3.0)  # about 5 probe rounds of 0.4 s each
        assert [s.status for s in rec.states][-1] == "ready"
        assert pm.counters.unresponsive_kills == 0 and pm.replicas()[0].restarts == 0


async def test_preload_refusal_leaves_the_replica_unready_with_backoff(
    fake_engine: Path, fake_model: Path, fake_adapter: object
) -> None:
    """ORCH-POOL-3018: not enough RAM → failed, last_error, retried with backoff."""
    rec = Recorder()
    cfg = _config(fake_engine, fake_model, replicas=1, ram_headroom_factor=1e15, **FAST)
    async with PoolManager(cfg, on_change=rec) as pm:
        await rec.wait_for(lambda s: s.circuit_open, timeout=20)
        (s,) = pm.replicas()
        assert s.pid is None and "preload refused: not enough host RAM" in str(s.last_error)
        assert pm.counters.preload_failed == 5 and pm.counters.preload_ok == 0


async def test_reload_switches_and_rolls_back(
    fake_engine: Path, fake_model: Path, fake_adapter: object, tmp_path: Path, pid_alive: Alive
) -> None:
    """ORCH-POOL-3019: a reload replaces replicas atomically; a bad model rolls back."""
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF other model")
    rec = Recorder()
    async with PoolManager(_config(fake_engine, fake_model, **FAST), on_change=rec) as pm:
        before = pm.replicas()
        with pytest.raises(ReloadError, match="does not exist") as err:
            await pm.reload("p", str(tmp_path / "missing.gguf"))
        assert err.value.verification
        with pytest.raises(ReloadError, match="expected 00"):
            await pm.reload("p", str(other), expected_digest="00" * 32)
        assert pm.replicas() == before and all(s.ready for s in before)

        drained: list[list[str]] = []

        async def drain(ids: list[str]) -> None:
            states = {s.replica_id: s.status for s in pm.replicas()}
            assert {states[i] for i in ids} == {"draining"}
            drained.append(ids)

        new = await pm.reload("p", str(other), drain=drain)
        assert drained == [["p-r0", "p-r1"]]
        assert [s.replica_id for s in new] == ["p-g1-r0", "p-g1-r1"]
        assert all(s.ready for s in new) and pm.replicas() == new
        assert new[0].model_digest != before[0].model_digest
        assert all(not pid_alive(s.pid or 0) for s in before)
        stopped = {s.replica_id for s in rec.states if s.status == "stopped"}
        assert stopped == {"p-r0", "p-r1"}
        assert pm.counters.reloads == 1 and pm.counters.reload_rollbacks == 2


async def test_drain_stops_the_pool_after_the_wait(
    fake_engine: Path, fake_model: Path, fake_adapter: object, pid_alive: Alive
) -> None:
    """ORCH-POOL-3012: draining first, engines stopped only after ``wait``."""
    rec = Recorder()
    async with PoolManager(_config(fake_engine, fake_model, **FAST), on_change=rec) as pm:
        pids = [s.pid or 0 for s in pm.replicas()]

        async def wait(ids: list[str]) -> None:
            assert all(pid_alive(p) for p in pids)
            assert {s.status for s in pm.replicas()} == {"draining"}

        await pm.drain("p", wait=wait)
        assert pm.replicas() == [] and not any(pid_alive(p) for p in pids)
        assert [s.status for s in rec.states][-2:] == ["stopped", "stopped"]


def test_replica_state_defaults(tmp_path: Path) -> None:
    s = ReplicaState(pool_id="p", replica_id="r", engine="e", status="ready")
    assert s.restarts == 0 and s.backoff_ms == 0 and not s.circuit_open


async def test_failed_provisioning_is_retried_with_backoff(
    fake_engine: Path, fake_model: Path, fake_adapter: object, tmp_path: Path
) -> None:
    """ORCH-3027: a model that is missing at first is provisioned on a retry."""
    late = tmp_path / "late.gguf"
    rec = Recorder()
    cfg = _config(fake_engine, late, replicas=1, provision_retries=3, **FAST)
    pm = PoolManager(cfg, on_change=rec)
    try:
        starting = asyncio.create_task(pm.start())
        await rec.wait_for(lambda s: s.status == "failed" and s.backoff_ms > 0)
        failed = next(s for s in rec.states if s.status == "failed")
        assert "does not exist" in (failed.last_error or "")
        late.write_bytes(fake_model.read_bytes())
        await asyncio.wait_for(starting, 20)
        (state,) = pm.replicas()
        assert state.ready and state.last_error is None
        assert 1 <= pm.counters.provision_retries <= 3
    finally:
        await pm.stop()


async def test_provisioning_retries_are_bounded_and_skip_verification_failures(
    fake_engine: Path, fake_model: Path, fake_adapter: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-3027: at most ``provision_retries`` retries; a digest mismatch is final."""
    calls: list[str] = []

    def provision(ref: str, **_: object) -> tuple[Path, str]:
        calls.append(ref)
        raise (VerificationError if "bad" in ref else ProvisionError)(f"{ref} refused")

    monkeypatch.setattr("llama_orch.pool_managerd.launch_engines.provision_model", provision)
    for ref, attempts in (("pypi:bad", 1), ("pypi:flaky", 3)):
        calls.clear()
        cfg = _config(fake_engine, fake_model, replicas=1, provision_retries=2, **FAST)
        cfg.pools[0].model = ref
        async with PoolManager(cfg) as pm:
            (state,) = pm.replicas()
            assert state.status == "failed" and state.backoff_ms == 0
            assert state.last_error == f"{ref} refused"
            assert len(calls) == attempts and pm.counters.provision_retries == attempts - 1
