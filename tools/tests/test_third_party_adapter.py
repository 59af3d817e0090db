"""A third-party adapter outside the workspace works with no change to llama-orch (ORCH-4018).

``examples/third-party-adapter`` (distribution ``llama-orch-adapter-echo``,
engine ``echo``, an HTTP engine adapter on ``llama-orch-adapter-http`` with its
own tiny echo engine) passes the conformance suite in its own venv, and
orchestratord installed beside it in a clean venv discovers it by name,
lists it in ``/v1/capabilities`` and completes a task on it through the
HTTP API, against the echo engine running as its own process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import msgspec
from llama_orch.core.sse import SSEParser

from .conftest import ROOT, _load

standalone = _load("standalone")
EXAMPLE = ROOT / "examples" / "third-party-adapter"


def test_example_passes_the_conformance_suite_in_its_own_venv(tmp_path: Path) -> None:
    """ORCH-4018, ORCH-4010: the suite works for a package that is not ours."""
    pkg = standalone.read_package(EXAMPLE)
    assert pkg.entry_points == ("echo",)
    proc, alone = standalone.run_package_tests(pkg, tmp_path)
    assert {n for n in alone if n.startswith("llama-orch-")} == {
        "llama-orch-adapter-echo",
        "llama-orch-adapter-http",
        "llama-orch-core",
    }
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 10, out[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_ready(
    http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], log: Path
) -> dict:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"orchestratord exited {proc.returncode}:\n{log.read_text()}"
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url + "/v1/capabilities") as resp:
                if resp.status == 200:
                    caps = await resp.json()
                    if caps["pools"] and caps["pools"][0]["replicas_ready"] >= 1:
                        return caps
        assert time.monotonic() < deadline, f"orchestratord not ready:\n{log.read_text()}"
        await asyncio.sleep(0.1)  # polling a separate process: there is no event to await


async def test_orchestratord_discovers_and_uses_the_installed_adapter(tmp_path: Path) -> None:
    """ORCH-4018, ORCH-3001: install beside orchestratord in a clean venv; engine
    ``echo`` is listed in /v1/capabilities and a task completes on it."""
    members = standalone.workspace_members()
    example = standalone.read_package(EXAMPLE)
    # orchestratord's wheels and those the example needs from the workspace (the HTTP base)
    wheels = standalone.wheels_for(["llama-orch-orchestratord", "llama-orch-adapter-http"], members)
    wheels.append(standalone.build_wheel(example))
    python = standalone.make_venv(tmp_path / "venv")
    standalone.install(python, ["llama-orch-orchestratord", example.name], wheels)
    port, engine_port = _free_port(), _free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 1.0},
        "auth": {"enabled": False},  # adapter discovery is under test, not keys (ORCH-8001)
        "pools": [
            {
                "id": "echo",
                "engine": "echo",
                "model": "echo-model",
                "endpoints": [f"http://127.0.0.1:{engine_port}"],
            }
        ],
    }
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    log = tmp_path / "orchestratord.log"
    engine_log = tmp_path / "echo-engine.log"
    with engine_log.open("wb") as out:  # the engine: the example's own server
        engine = subprocess.Popen(
            [str(python), "-m", "echo_adapter.server", "--port", str(engine_port)],
            cwd=tmp_path,
            env=standalone.clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    proc: subprocess.Popen[bytes] | None = None
    url = f"http://127.0.0.1:{port}"
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(python.parent / "orchestratord"), "--config", str(cfg)],
                cwd=tmp_path,
                env=standalone.clean_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        async with aiohttp.ClientSession() as http:
            caps = await _wait_ready(http, url, proc, log)
            assert "echo" in caps["engines"], caps["engines"]
            assert caps["pools"][0]["engine"] == "echo"
            body = {"prompt": "hello echo world", "max_tokens": 6, "engine": "echo"}
            async with http.post(url + "/v1/tasks", json=body) as resp:
                assert resp.status == 202, await resp.text()
                task_id = (await resp.json())["task_id"]
            events = []
            parser = SSEParser()
            async with http.get(f"{url}/v1/tasks/{task_id}/stream") as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_any():
                    events += [(m.event, msgspec.json.decode(m.data)) for m in parser.feed(chunk)]
    finally:
        for p in (proc, engine):  # by process group, orchestratord first
            if p is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    names = [e for e, _ in events]
    assert names[0] == "started" and names[-1] == "end", names
    assert events[0][1]["engine"] == "echo"
    text = "".join(d["t"] for e, d in events if e == "token")
    assert text == " hello echo world hello echo world"
    assert events[-1][1]["reason"] == "length" and events[-1][1]["tokens_out"] == 6
