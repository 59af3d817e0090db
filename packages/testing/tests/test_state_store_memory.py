"""The state-store conformance suite on the in-process reference backend (ORCH-2514, ORCH-2502)."""

from __future__ import annotations

import pytest
from llama_orch.core.state_memory import MemoryStateStore
from llama_orch.core.state_store import StateStore
from llama_orch.testing.state_store import StateStoreConformance, StoreUnderTest


class TestMemoryConformance(StateStoreConformance):
    @pytest.fixture
    def store_under_test(self) -> StoreUnderTest:
        now = [1000.0]

        async def open_() -> StateStore:
            return MemoryStateStore(clock=lambda: now[0])

        async def peer(store: StateStore) -> StateStore:
            return store  # one process: every "client" is the same object

        async def advance(seconds: float) -> None:
            now[0] += seconds

        return StoreUnderTest("memory", open_, peer, advance)
