"""orchestratord with the embedded pool manager on a real engine (the default mode)."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.orchestratord.serve import serve

pytestmark = pytest.mark.real_engine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_embedded_pool_serves_and_stops_cleanly(llama_server_binary, smollm2_model):
    """ORCH-POOL-3004/3005/3010 through orchestratord: the pool manager starts a real
    llama-server, the task streams, shutdown leaves no engine process."""
    config = msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {"enabled": False},  # other features are tested without keys (ORCH-8001)
            "allow_cpu_inference": True,
            "pools": [
                {
                    "id": "smol",
                    "engine": "llamacpp-http",
                    "model": "pypi:smollm2-135m-instruct-q4_1",
                    "ctx": 1024,
                    "slots": 1,
                    "threads": 2,
                }
            ],
        },
        Config,
    )
    stop = asyncio.Event()
    listening: asyncio.Future[tuple[str, object]] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve(
            config,
            shutdown_trigger=stop.wait,
            on_listening=lambda u, o: listening.set_result((u, o)),
        )
    )
    pids: list[int] = []
    try:
        url, _ = await asyncio.wait_for(listening, 30)
        async with aiohttp.ClientSession() as http:
            health: dict = {}
            for _ in range(1200):
                async with http.get(f"{url}/v1/pools/smol/health") as r:
                    health = await r.json()
                if health["ready"] or health["last_error"]:
                    break
                await asyncio.sleep(0.05)
            assert health["ready"], health
            replica = health["replicas"][0]
            assert replica["model_digest"] == smollm2_model[1]
            assert replica["engine_version"] == llama_server_binary.engine_version
            assert replica["cpu_inference"] is True
            pids.append(replica["pid"])
            async with http.get(f"{url}/v1/capabilities") as r:
                caps = await r.json()
            assert caps["cpu_inference"] is True and caps["pools"][0]["replicas_ready"] == 1
            async with http.post(
                f"{url}/v1/tasks",
                json={
                    "workload": "chat",
                    "messages": [{"role": "user", "content": "Say hello."}],
                    "max_tokens": 16,
                    "seed": 1,
                },
            ) as r:
                assert r.status == 202, await r.text()
                tid = (await r.json())["task_id"]
            async with http.get(f"{url}/v1/tasks/{tid}/stream") as r:
                body = await r.text()
            assert "event: started" in body and "event: token" in body and "event: end" in body
    finally:
        stop.set()
        await asyncio.wait_for(server, 60)
    assert pids and not any(_alive(p) for p in pids)
