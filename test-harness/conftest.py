"""Fixtures shared by the test harness: orchestratord served in-process.

``start_orchestrator(config)`` serves orchestratord through its real lifespan
(``serve``, Hypercorn on a free loopback port) and returns an
``orch_harness.Harness`` that talks to it over HTTP only; every server it
started is stopped at teardown, even when the test fails (ORCH-4002).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest
from llama_orch.core.config import Config
from llama_orch.orchestratord.serve import serve
from llama_orch.testing_engines.inprocess import stop_served


def _load_harness() -> ModuleType:
    # --import-mode=importlib keeps test-harness/ off sys.path; load by path.
    name = "orch_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("orch_harness.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


Harness = _load_harness().Harness


@pytest.fixture
async def start_orchestrator() -> AsyncIterator[Callable[[Config], Awaitable[Harness]]]:
    running: list[tuple[asyncio.Event, asyncio.Task[None], aiohttp.ClientSession]] = []

    async def start(cfg: Config) -> Harness:
        stop = asyncio.Event()
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            serve(
                cfg,
                shutdown_trigger=stop.wait,
                on_listening=lambda url, _orch: listening.set_result(url),
            )
        )
        done, _ = await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        http = aiohttp.ClientSession()
        running.append((stop, task, http))
        return Harness(listening.result(), http)

    try:
        yield start
    finally:
        for _, _, http in running:
            await http.close()
        await stop_served([(stop, task) for stop, task, _ in running], 60)  # ORCH-6241
