"""Fixtures: an in-process fake orchestratord on 127.0.0.1, port 0."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

FAKE_PATH = Path(__file__).with_name("fake_orchestratord.py")


def _load_fake():  # type: ignore[no-untyped-def]
    # --import-mode=importlib keeps tests/ off sys.path; load the helper by path.
    name = "llorch_tests_fake_orchestratord"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FAKE_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fake_module = _load_fake()
FakeOrchestratord = fake_module.FakeOrchestratord


@pytest.fixture
async def fake() -> AsyncIterator[FakeOrchestratord]:
    orch = FakeOrchestratord()
    server = TestServer(orch.app, host="127.0.0.1", port=0)
    await server.start_server()
    orch.url = str(server.make_url("")).rstrip("/")
    yield orch
    await server.close()
