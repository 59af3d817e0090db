"""Fixtures: an in-process orchestratord served by Hypercorn on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.core.sse import SSEParser
from llama_orch.orchestratord.serve import serve
from llama_orch.orchestratord.service import Orchestrator


@dataclass
class Running:
    url: str
    orch: Orchestrator
    http: aiohttp.ClientSession

    async def submit(self, **body: Any) -> aiohttp.ClientResponse:
        body.setdefault("prompt", "hello world")
        resp = await self.http.post(self.url + "/v1/tasks", json=body)
        await resp.read()
        return resp

    async def events(
        self, task_id: str, last_event_id: int | None = None, limit: int | None = None
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """Read the SSE stream (to its end, or ``limit`` events) as (id, event, data)."""
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        out: list[tuple[int, str, dict[str, Any]]] = []
        parser = SSEParser()
        async with self.http.get(f"{self.url}/v1/tasks/{task_id}/stream", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for chunk in resp.content.iter_any():
                for msg in parser.feed(chunk):
                    assert msg.id is not None
                    out.append((int(msg.id), msg.event, msgspec.json.decode(msg.data)))
                    if limit is not None and len(out) >= limit:
                        return out
        return out

    async def metrics_text(self) -> str:
        async with self.http.get(self.url + "/metrics") as resp:
            return await resp.text()


def _mock_config(**pool: Any) -> Config:
    admission = pool.pop("admission", {})
    options = pool.pop("adapter_options", {})
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 2.0},
        "admission": admission,
        "pools": [
            {
                "id": "mock",
                "engine": "mock",
                "model": "mock-model",
                "endpoints": ["mock://0"],
                "adapter_options": options,
                **pool,
            }
        ],
    }
    return msgspec.convert(doc, Config)


@pytest.fixture
def mock_config() -> Callable[..., Config]:
    """Config with one pool ``mock`` of one mock replica; kwargs override pool fields."""
    return _mock_config


@pytest.fixture
async def start_orchestrator() -> AsyncIterator[Callable[[Config], Awaitable[Running]]]:
    stops: list[tuple[asyncio.Event, asyncio.Task[None], aiohttp.ClientSession]] = []

    async def start(config: Config, *, wait_ready: bool = True) -> Running:
        stop = asyncio.Event()
        listening: asyncio.Future[tuple[str, Orchestrator]] = (
            asyncio.get_running_loop().create_future()
        )
        task = asyncio.create_task(
            serve(
                config,
                shutdown_trigger=stop.wait,
                on_listening=lambda url, orch: listening.set_result((url, orch)),
            )
        )
        done, _ = await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        url, orch = listening.result()
        http = aiohttp.ClientSession()
        stops.append((stop, task, http))
        # wait until every pool has a Ready replica (or failed)
        for _ in range(600 if wait_ready else 0):
            if all(p.ready_replicas() for p in orch.pools.values()):
                if not orch.self_tests.running:  # other replicas' checks done (ORCH-7050)
                    break
            await asyncio.sleep(0.05)
        return Running(url, orch, http)

    try:
        yield start
    finally:
        for stop, task, http in stops:
            await http.close()
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
