"""Fixtures: an in-process orchestratord served by Hypercorn on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.config import Config
from llama_orch.core.sse import SSEParser
from llama_orch.orchestratord import main
from llama_orch.orchestratord.auth import hash_key
from llama_orch.orchestratord.serve import serve
from llama_orch.orchestratord.service import Orchestrator
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.testing_engines.inprocess import stop_served


@dataclass
class Running:
    url: str
    orch: Orchestrator
    http: aiohttp.ClientSession
    stop: asyncio.Event | None = None  # set: the instance shuts down gracefully

    async def submit(self, *, key: str | None = None, **body: Any) -> aiohttp.ClientResponse:
        body.setdefault("prompt", "hello world")
        resp = await self.http.post(self.url + "/v1/tasks", json=body, headers=bearer(key))
        await resp.read()
        return resp

    async def events(
        self,
        task_id: str,
        last_event_id: int | None = None,
        limit: int | None = None,
        *,
        key: str | None = None,
    ) -> list[tuple[int, str, dict[str, Any]]]:
        """Read the SSE stream (to its end, or ``limit`` events) as (id, event, data)."""
        headers = bearer(key)
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
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

    async def until(
        self, predicate: Callable[[], bool], timeout: float = 30.0, what: str = "the condition"
    ) -> None:
        """Wait until ``predicate()`` holds, re-checked at every task phase change
        (ORCH-2413): no polling, no timing bet."""
        ok = await self.orch.tasks.wait_for(predicate, timeout)
        assert ok, f"timed out after {timeout} s waiting for {what}"

    async def until_tokens(self, task_id: str, n: int, timeout: float = 30.0) -> None:
        """Wait until the task streamed ``n`` tokens, woken by its own appends."""
        rec = self.orch.get(task_id)

        async def read() -> None:
            async with contextlib.aclosing(rec.frames()) as frames:
                async for _ in frames:
                    if rec.tokens_out >= n:
                        return
            raise AssertionError(f"task {task_id} ended after {rec.tokens_out} tokens")

        await asyncio.wait_for(read(), timeout)

    async def settled(self, task_id: str, timeout: float = 30.0) -> None:
        """Wait until the task ended and its runner released the slot."""
        rec = self.orch.get(task_id)
        await asyncio.wait_for(rec.ended.wait(), timeout)
        if rec.runner is not None:  # the release is a done-callback registered first
            await asyncio.wait({rec.runner}, timeout=timeout)

    async def metrics_text(self, key: str | None = None) -> str:
        async with self.http.get(self.url + "/metrics", headers=bearer(key)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.text()


def _tenant_keys(*tenants: str, **auth: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """An ``auth`` section with one ``tenant`` key per name plus an ``admin`` key,
    and the plaintext keys by name (tests only; config holds the hashes)."""
    keys = {name: f"llo_test-{name}-{'k' * 40}" for name in (*tenants, "admin")}
    entries = [
        {"id": f"key-{name}", "role": "tenant", "tenant": name, "hash": hash_key(keys[name])}
        for name in tenants
    ]
    entries.append({"id": "key-admin", "role": "admin", "hash": hash_key(keys["admin"])})
    return {"enabled": True, "keys": entries, **auth}, keys


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def _mock_config(**pool: Any) -> Config:
    admission = pool.pop("admission", {})
    auth = pool.pop("auth", {"enabled": False})  # other features are tested without keys
    limits = pool.pop("limits", {})
    options = pool.pop("adapter_options", {})
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 0.25},
        "auth": auth,
        "limits": limits,
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
def tenant_keys() -> Callable[..., tuple[dict[str, Any], dict[str, str]]]:
    """``tenant_keys("a", "b", public_metrics=True)`` → (auth section, plaintext keys)."""
    return _tenant_keys


@pytest.fixture
def mock_config() -> Callable[..., Config]:
    """Config with one pool ``mock`` of one mock replica; kwargs override pool fields,
    and ``admission``, ``auth``, ``limits`` set those sections (auth off by default, ORCH-8001)."""
    return _mock_config


@pytest.fixture
async def start_orchestrator() -> AsyncIterator[Callable[[Config], Awaitable[Running]]]:
    stops: list[tuple[asyncio.Event, asyncio.Task[None], aiohttp.ClientSession]] = []

    async def start(config: Config, *, wait_ready: bool = True, **serve_kw: Any) -> Running:
        stop = asyncio.Event()
        listening: asyncio.Future[tuple[str, Orchestrator]] = (
            asyncio.get_running_loop().create_future()
        )
        task = asyncio.create_task(
            serve(
                config,
                shutdown_trigger=stop.wait,
                on_listening=lambda url, orch: listening.set_result((url, orch)),
                **serve_kw,
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
        return Running(url, orch, http, stop)

    try:
        yield start
    finally:
        for _, _, http in stops:
            await http.close()
        await stop_served([(stop, task) for stop, task, _ in stops], 30)  # ORCH-6241


def finish_eta(data: dict) -> bool:
    """A running task's finish-ETA update (ORCH-2907): a `metrics` frame that carries
    `predicted_finish_ms` only; it may come at any time under load, so the tests
    that read the announce frame (ORCH-1117) skip it. The decoded data carries the
    union's tag (`type`) too."""
    return set(data) - {"type"} == {"predicted_finish_ms"}


def bare_record() -> TaskRecord:
    """A queued task's record with nothing around it (ORCH-2771, ORCH-2790, ORCH-2791)."""
    req = GenerateRequest(task_id="t-1", prompt="hi", max_tokens=2, seed=1)
    return TaskRecord(
        task_id=req.task_id,
        pool_id="p",
        engine="mock",
        priority="interactive",
        request=req,
        prompt_tokens=1,
    )


@pytest.fixture
def daemon_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """``configure_logging`` as the daemon runs it, writing to a buffer; every global
    it changes is put back afterwards."""
    out = io.StringIO()
    monkeypatch.setattr(main.sys, "stderr", out)
    for name in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    hypercorn_level = logging.getLogger("hypercorn.error").level
    try:
        main.configure_logging("INFO")
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("hypercorn.error").setLevel(hypercorn_level)
