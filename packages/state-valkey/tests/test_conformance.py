"""The state-store conformance suite on a real valkey-server (ORCH-2514, ORCH-2503)."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from llama_orch.core.state_store import StateStore
from llama_orch.state_valkey import ValkeyStateStore
from llama_orch.testing.state_store import StateStoreConformance, StoreUnderTest

_namespaces = itertools.count()


class TestValkeyConformance(StateStoreConformance):
    @pytest.fixture
    def store_under_test(self, valkey_url: str) -> StoreUnderTest:
        async def open_() -> StateStore:
            store = ValkeyStateStore(valkey_url, key_prefix=f"t{next(_namespaces)}")
            await store.start()
            return store

        async def peer(store: StateStore) -> StateStore:
            assert isinstance(store, ValkeyStateStore)
            other = ValkeyStateStore(valkey_url, key_prefix=store._keys[0][1:-2])
            await other.start()
            return other

        return StoreUnderTest("valkey", open_, peer, asyncio.sleep)
