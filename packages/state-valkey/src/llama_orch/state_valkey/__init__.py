"""Shared task state on Valkey (>= 7.2) or Redis (>= 7.0): the ``valkey`` state store.

See ``.specs/25-state-store.md``. The entry point ``valkey`` in the group
``llama_orch.state_stores`` names :class:`ValkeyStateStore`.
"""

from ._store import LIBRARY, ValkeyStateStore
from .server import EmbeddedServer, ServerUnavailable, find_server_binary

__all__ = [
    "LIBRARY",
    "EmbeddedServer",
    "ServerUnavailable",
    "ValkeyStateStore",
    "find_server_binary",
]
