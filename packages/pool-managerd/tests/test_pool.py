"""PoolManager lifecycle against a fake engine process and an in-process adapter."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from llama_orch.core.config import Config, EngineLaunchConfig, PoolConfig
from llama_orch.core.replica import ReplicaState
from llama_orch.pool_managerd import PoolManager

Alive = Callable[[int], bool]


def _config(engine: Path, model: Path, *, allow_cpu: bool = True, **pool: object) -> Config:
    fields: dict[str, object] = {
        "id": "p",
        "model": str(model),
        "engine_binary": str(engine),
        "replicas": 2,
        "startup_timeout_s": 20.0,
    }
    fields.update(pool)
    return Config(allow_cpu_inference=allow_cpu, pools=[PoolConfig(**fields)])  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.states: list[ReplicaState] = []
        self.changed = asyncio.Event()

    def __call__(self, state: ReplicaState) -> None:
        self.states.append(state)
        self.changed.set()

    def statuses(self, replica_id: str) -> list[str]:
        return [s.status for s in self.states if s.replica_id == replica_id]

    async def wait_for(self, pred: Callable[[ReplicaState], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not any(pred(s) for s in self.states):
                self.changed.clear()
                await self.changed.wait()


async def test_cpu_pool_is_refused_unless_allowed(fake_engine: Path, fake_model: Path) -> None:
    """ORCH-POOL-3005: no devices and no allow_cpu_inference → failed, with the fix."""
    rec = Recorder()
    pm = PoolManager(_config(fake_engine, fake_model, allow_cpu=False), on_change=rec)
    await pm.start()
    states = pm.replicas()
    assert [s.replica_id for s in states] == ["p-r0", "p-r1"]
    for s in states:
        assert s.status == "failed" and s.pid is None and s.cpu_inference
        assert s.last_error is not None
        assert "allow_cpu_inference: true" in s.last_error and "devices" in s.last_error
    assert rec.statuses("p-r0") == ["provisioning", "failed"]
    await pm.stop()


async def test_unlaunchable_engines_and_misfit_launch_keys_fail_and_remote_pools_are_skipped(
    fake_engine: Path, fake_model: Path
) -> None:
    """ORCH-POOL-3030, ORCH-POOL-3034: only the four launchable engines start; a
    ``launch`` key that does not apply to the pool's engine is refused, not ignored."""
    cfg = Config(
        allow_cpu_inference=True,
        pools=[
            PoolConfig(id="m", engine="mock", model=str(fake_model)),
            PoolConfig(
                id="v",
                engine="vllm-http",
                model=str(fake_model),
                launch=EngineLaunchConfig(trtllm_version="0.20.0"),
            ),
            PoolConfig(id="remote", endpoints=["http://127.0.0.1:9"]),
        ],
    )
    async with PoolManager(cfg) as pm:
        states = {s.replica_id: s for s in pm.replicas()}
    assert sorted(states) == ["m-r0", "v-r0"]
    assert all(s.status == "failed" for s in states.values())
    assert states["m-r0"].last_error == "engine mock cannot be launched by pool-managerd yet"
    assert states["v-r0"].last_error == (
        "pool v: launch.trtllm_version does not apply to vllm-http"
    )


async def test_replicas_become_ready_and_stop_leaves_no_process(
    fake_engine: Path,
    fake_model: Path,
    fake_adapter: object,
    pid_alive: Alive,
    reap_pids: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ORCH-POOL-3004 gate passes; ORCH-POOL-3010 every process group is gone after stop()."""
    rec, progress = Recorder(), []
    cfg = _config(fake_engine, fake_model, slots=3, adapter_options={"slots": 3})
    with caplog.at_level(logging.WARNING, logger="llama_orch.pool_managerd"):
        async with PoolManager(cfg, on_change=rec, progress=progress.append) as pm:
            states = pm.replicas()
            reap_pids.extend(s.pid for s in states if s.pid)
            assert [s.status for s in states] == ["ready", "ready"]
            for s in states:
                assert s.cpu_inference and s.slots == 3 and s.ctx == 512 and s.ready_at
                assert s.engine_version.startswith("llama.cpp+sha256.")
                assert s.model_digest and s.base_url.startswith("http://127.0.0.1:")
                assert s.pid is not None and pid_alive(s.pid)
            assert states[0].base_url != states[1].base_url
            assert rec.statuses("p-r1") == ["provisioning", "starting", "ready"]
    assert any("runs on the CPU" in r.getMessage() for r in caplog.records)
    assert any("provisioning model" in m for m in progress)
    assert all(not pid_alive(pid) for pid in reap_pids)
    assert [s.status for s in pm.replicas()] == ["stopped", "stopped"]
    await pm.stop()  # idempotent


async def test_an_engine_that_exits_fails_with_its_output(
    fake_engine: Path,
    fake_model: Path,
    fake_adapter: object,
    monkeypatch: pytest.MonkeyPatch,
    pid_alive: Alive,
) -> None:
    monkeypatch.setenv("FAKE_ENGINE_MODE", "crash")
    async with PoolManager(_config(fake_engine, fake_model, replicas=1)) as pm:
        (s,) = pm.replicas()
        assert s.status == "failed" and s.pid is not None
        assert s.last_error is not None
        assert "exited with 3" in s.last_error and "failed to load model" in s.last_error
        assert not pid_alive(s.pid)


async def test_startup_timeout_stops_the_engine(
    fake_engine: Path,
    fake_model: Path,
    fake_adapter: object,
    monkeypatch: pytest.MonkeyPatch,
    pid_alive: Alive,
    reap_pids: list[int],
) -> None:
    monkeypatch.setenv("FAKE_ENGINE_MODE", "hang")
    pm = PoolManager(_config(fake_engine, fake_model, replicas=1, startup_timeout_s=0.5))
    await pm.start()
    (s,) = pm.replicas()
    assert s.pid is not None
    reap_pids.append(s.pid)
    assert s.status == "failed" and "not ready within startup_timeout_s=0.5" in str(s.last_error)
    assert not pid_alive(s.pid)
    await pm.stop()


async def test_a_failed_readiness_decode_fails_the_replica(
    fake_engine: Path, fake_model: Path, fake_adapter: object, pid_alive: Alive
) -> None:
    """ORCH-POOL-3004: /health 200 alone is not Ready."""
    cfg = _config(fake_engine, fake_model, replicas=1, adapter_options={"fail": True})
    async with PoolManager(cfg) as pm:
        (s,) = pm.replicas()
        assert s.status == "failed" and "fake decode failure" in str(s.last_error)
        assert s.pid is not None and not pid_alive(s.pid)


async def test_watcher_marks_a_dead_engine_failed(
    fake_engine: Path, fake_model: Path, fake_adapter: object, reap_pids: list[int]
) -> None:
    rec = Recorder()
    async with PoolManager(_config(fake_engine, fake_model), on_change=rec) as pm:
        victim, other = pm.replicas()
        assert victim.pid is not None and other.pid is not None
        reap_pids.extend([victim.pid, other.pid])
        os.killpg(victim.pid, signal.SIGKILL)
        await rec.wait_for(lambda s: s.replica_id == "p-r0" and s.status == "failed")
        victim, other = pm.replicas()
        assert victim.last_error == f"engine exited with code {-signal.SIGKILL}"
        assert other.status == "ready"


async def test_cancelling_start_leaves_no_process(
    fake_engine: Path,
    fake_model: Path,
    fake_adapter: object,
    monkeypatch: pytest.MonkeyPatch,
    pid_alive: Alive,
    reap_pids: list[int],
) -> None:
    """ORCH-POOL-3010: Ctrl-C during startup stops every engine already spawned."""
    monkeypatch.setenv("FAKE_ENGINE_MODE", "hang")
    rec = Recorder()
    pm = PoolManager(_config(fake_engine, fake_model), on_change=rec)
    task = asyncio.create_task(pm.start())
    await rec.wait_for(lambda s: s.status == "starting" and s.replica_id == "p-r1")
    pids = [s.pid for s in pm.replicas() if s.pid]
    reap_pids.extend(pids)
    assert pids and all(pid_alive(p) for p in pids)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(pid_alive(p) for p in pids)
    assert {s.status for s in pm.replicas()} == {"stopped"}


@pytest.mark.parametrize("env_host", [None, "127.0.0.3"])
async def test_engines_listen_and_are_reported_at_the_engine_host(
    fake_engine: Path,
    fake_model: Path,
    fake_adapter: object,
    reap_pids: list[int],
    monkeypatch: pytest.MonkeyPatch,
    env_host: str | None,
) -> None:
    """ORCH-6223: ``pool_managerd.engine_host`` is where the engine binds and what the
    replica reports; ``$LLAMA_ORCH_ENGINE_HOST`` (a pod IP on Kubernetes) overrides it."""
    from llama_orch.core.config import PoolManagerdConfig
    from llama_orch.pool_managerd.pool import ENGINE_HOST_ENV

    if env_host:
        monkeypatch.setenv(ENGINE_HOST_ENV, env_host)
    else:
        monkeypatch.delenv(ENGINE_HOST_ENV, raising=False)
    cfg = _config(fake_engine, fake_model, replicas=1)
    cfg = Config(
        allow_cpu_inference=True,
        pools=cfg.pools,
        pool_managerd=PoolManagerdConfig(engine_host="127.0.0.2"),
    )
    want = env_host or "127.0.0.2"
    async with PoolManager(cfg) as pm:
        (state,) = pm.replicas()
        reap_pids.extend([state.pid] if state.pid else [])
        assert state.status == "ready", state.last_error
        assert state.base_url.startswith(f"http://{want}:")
        with open(f"/proc/{state.pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
        assert argv[argv.index(b"--host") + 1] == want.encode()
