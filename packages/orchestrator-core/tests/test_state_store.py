"""The state-store seam in core: plugin loading and the continuation helper (ORCH-2501, ORCH-2511).

The behaviour of both backends is proven by the conformance suite
(``llama_orch.testing.state_store``), run in packages/testing and packages/state-valkey.
"""

from __future__ import annotations

import msgspec
import pytest
from llama_orch.core.api import TokenEvent
from llama_orch.core.errors import ErrorCode
from llama_orch.core.state_memory import MemoryStateStore
from llama_orch.core.state_store import (
    LoggedEvent,
    StateOptions,
    UnknownStateStore,
    continuation,
    displaced_terminal,
    load_state_store_class,
)


def test_memory_backend_is_registered_by_name() -> None:
    """ORCH-2501: `memory` resolves through the llama_orch.state_stores group."""
    cls = load_state_store_class("memory")
    assert cls is MemoryStateStore
    assert isinstance(cls.from_options(StateOptions()), MemoryStateStore)


def test_unknown_backend_is_a_typed_error() -> None:
    """ORCH-2501: a missing plugin fails with a message naming the known ones."""
    with pytest.raises(UnknownStateStore, match="memory"):
        load_state_store_class("no-such-store")


def test_continuation_rebuilds_text_and_next_index() -> None:
    """ORCH-2511: text so far and the next token index come from the log alone."""
    log = [LoggedEvent(0, "started", b"{}")] + [
        LoggedEvent(n + 1, "token", msgspec.json.encode(TokenEvent(t, n)))
        for n, t in enumerate(["The", " sky", " is"])
    ]
    assert continuation(log) == ("The sky is", 3)
    assert continuation([]) == ("", 0)


def test_displaced_terminal_carries_the_policy_code() -> None:
    """ORCH-2506: the store-written terminal is a regular `error` event."""
    ev = displaced_terminal(ErrorCode.QUEUE_FULL_DROP_LRU)
    assert ev.kind == "error"
    assert msgspec.json.decode(ev.data)["code"] == "QUEUE_FULL_DROP_LRU"
