"""Fixtures: orchestratord (with this frontend installed) served on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.orchestratord.auth import hash_key
from llama_orch.orchestratord.serve import serve
from llama_orch.orchestratord.service import Orchestrator
from llama_orch.testing_engines.inprocess import stop_served

TENANT_KEY = "llo_test-tenant-" + "k" * 40
ADMIN_KEY = "llo_test-admin-" + "k" * 40


@dataclass
class Daemon:
    url: str
    orch: Orchestrator

    @property
    def base(self) -> str:
        return self.url + "/v1"


def mock_config(*, auth: bool = True, **pool: Any) -> Config:
    """One pool ``mock`` (model ``mock-model``) of one mock replica; kwargs override
    pool fields; ``admission`` sets that section."""
    admission = pool.pop("admission", {})
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 2.0},
        "auth": {
            "enabled": auth,
            "keys": [
                {"id": "t", "role": "tenant", "tenant": "acme", "hash": hash_key(TENANT_KEY)},
                {"id": "a", "role": "admin", "hash": hash_key(ADMIN_KEY)},
            ],
        },
        "admission": admission,
        "pools": [
            {"id": "mock", "engine": "mock", "model": "mock-model", "endpoints": ["mock://0"],
             **pool}
        ],
    }  # fmt: skip
    return msgspec.convert(doc, Config)


@pytest.fixture
async def start_daemon() -> AsyncIterator[Callable[[Config], Awaitable[Daemon]]]:
    stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(config: Config) -> Daemon:
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
        stops.append((stop, task))
        done, _ = await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        url, orch = listening.result()
        for _ in range(2400):  # real engines: up to 120 s to load
            if all(p.ready_replicas() for p in orch.pools.values()):
                if not orch.self_tests.running:
                    break
            await asyncio.sleep(0.05)
        return Daemon(url, orch)

    try:
        yield start
    finally:
        await stop_served(stops, 30)  # ORCH-6241


@pytest.fixture
def config() -> Callable[..., Config]:
    """``config(**pool)`` → the mock-pool config of :func:`mock_config`."""
    return mock_config


@pytest.fixture
def key() -> str:
    """The plaintext tenant key (tenant ``acme``) of every config here."""
    return TENANT_KEY
