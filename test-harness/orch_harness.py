"""Helpers shared by the test harness (loaded by ``conftest.py`` as ``orch_harness``).

Tests run with ``--import-mode=importlib``, so this directory is not on
``sys.path``; ``conftest.py`` registers this file under the module name
``orch_harness`` before any test module imports it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from llama_orch.core.config import Config
from llama_orch.core.sse import SSEParser

REPO_ROOT = Path(__file__).resolve().parent.parent

Event = tuple[int, str, dict[str, Any]]


@dataclass
class Harness:
    url: str
    http: aiohttp.ClientSession

    async def submit(self, **body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
        """``POST /v1/tasks``; returns (status, JSON body, headers)."""
        async with self.http.post(self.url + "/v1/tasks", json=body) as resp:
            return resp.status, await resp.json(), dict(resp.headers)

    async def events(
        self,
        task_id: str,
        *,
        last_event_id: int | None = None,
        limit: int | None = None,
        until: str | None = None,
    ) -> list[Event]:
        """The task's SSE stream as (id, event, data), to its end, ``limit`` events or the
        first event named ``until``."""
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        out: list[Event] = []
        parser = SSEParser()
        async with self.http.get(f"{self.url}/v1/tasks/{task_id}/stream", headers=headers) as r:
            assert r.status == 200, await r.text()
            async for chunk in r.content.iter_any():
                for msg in parser.feed(chunk):
                    assert msg.id is not None, msg
                    out.append((int(msg.id), msg.event, msgspec.json.decode(msg.data)))
                    if limit is not None and len(out) >= limit:
                        return out
                    if until is not None and msg.event == until:
                        return out
        return out

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.text()
            return resp.status, body

    async def wait_ready(
        self, pool_id: str, timeout_s: float = 180.0, replicas: int = 1
    ) -> dict[str, Any]:
        """Poll ``/v1/pools/{id}/health`` until ``replicas`` replicas are ready
        (or a replica failed)."""
        health: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            _, health = await self.get(f"/v1/pools/{pool_id}/health")
            ready = sum(r.get("status") == "ready" for r in health.get("replicas", []))
            if (health.get("ready") and ready >= replicas) or health.get("last_error"):
                break
            await asyncio.sleep(0.05)
        assert health.get("ready"), f"pool {pool_id} not ready: {health}"
        return health


def prometheus_samples(text: str) -> dict[str, float]:
    """``name{labels}`` → value for every sample line of a Prometheus text page."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = re.match(r"^(\S+?(?:\{.*\})?)\s+(\S+)", line)
            if m:
                samples[m.group(1)] = float(m.group(2))
    return samples


def config(doc: dict[str, Any]) -> Config:
    doc.setdefault("server", {"port": 0, "shutdown_grace_s": 2.0})
    doc.setdefault("auth", {"enabled": False})  # ORCH-8001: explicit, tests only
    return msgspec.convert(doc, Config)


def mock_pool(pool_id: str = "mock", **fields: Any) -> dict[str, Any]:
    return {
        "id": pool_id,
        "engine": "mock",
        "model": "mock-model",
        "endpoints": ["mock://0"],
        **fields,
    }
