"""orchestratord's model catalog in the shared Valkey (ORCH-3383, issue #18).

With ``state: {backend: valkey}`` every orchestratord instance reads and writes
one catalog: each entry is a JSON document in one hash (id → document), a
version counter numbers the catalog's states, and every change is one script
that compares the version the writer read with the current one, applies the
writes and deletes, bumps the version and publishes it. A writer that lost the
race gets ``None`` and recomputes its change on the fresh catalog, so a
transition is always checked against the state it changes. Canary credit is a
per-name counter in millionths, taken by one atomic script per routed task.

The client is valkey-py's synchronous one: the catalog is read from memory on
the admission path and written from worker threads; only a canary split calls
the server on the admission path (one round trip).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import valkey
from llama_orch.core.state_store import StoreUnavailable
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

__all__ = ["ValkeyCatalog"]

_COMMIT = """
local v = tonumber(redis.call('GET', KEYS[2]) or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], v)
return v
"""
# weight in millionths: integer arithmetic, so every instance's split is the same
_CREDIT = """
local acc = redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
if acc >= 1000000 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], -1000000)
  return 1
end
return 0
"""
_ONE = 1_000_000


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Transport failures are the store's 503 with Retry-After (ORCH-2516)."""
    try:
        yield
    except (ValkeyConnectionError, ValkeyTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"state store unreachable (catalog): {exc}") from exc


class ValkeyCatalog:
    """The catalog backend of :class:`llama_orch.orchestratord.catalog.Catalog` on Valkey."""

    shared = True  # several orchestratord instances see one catalog

    def __init__(
        self, url: str, key_prefix: str = "llorch", *, socket_timeout: float = 5.0
    ) -> None:
        # Any: valkey-py leaves pipeline(), pubsub() and close() unannotated
        self._client: Any = valkey.Valkey.from_url(url, socket_timeout=socket_timeout)
        base = f"{{{key_prefix}}}:catalog"
        self._entries = f"{base}:entries"  # id -> the entry as JSON
        self._version = f"{base}:v"
        self._credit = f"{base}:credit"  # name -> canary credit in millionths
        self.channel = f"{base}:changed"
        self._commit = self._client.register_script(_COMMIT)
        self._take = self._client.register_script(_CREDIT)
        self._pubsub: Any = None
        self.location = f"{url} ({base})"

    def load(self) -> tuple[int, dict[str, bytes]]:
        """One consistent snapshot: the version and every entry's document."""
        with _reachable():
            pipe = self._client.pipeline(transaction=True)  # MULTI/EXEC
            pipe.get(self._version)
            pipe.hgetall(self._entries)
            version, docs = pipe.execute()
            return int(version or 0), {k.decode(): bytes(v) for k, v in docs.items()}

    def version(self) -> int:
        with _reachable():
            return int(cast(bytes | None, self._client.get(self._version)) or 0)

    def commit(self, expected: int, put: dict[str, bytes], delete: list[str]) -> int | None:
        """Apply the change if the catalog is still at ``expected``; the new version,
        or None when another writer came first."""
        with _reachable():
            args: list[Any] = [expected, self.channel, len(put)]
            for key, doc in put.items():
                args += [key, doc]
            args += delete
            v = int(cast(int, self._commit(keys=[self._entries, self._version], args=args)))
            return None if v < 0 else v

    def take_credit(self, name: str, weight: float) -> bool:
        """Add ``weight`` to the name's canary credit; True (and one unit less) when it
        reached one (ORCH-3331 across instances)."""
        with _reachable():
            step = max(1, round(weight * _ONE))
            return bool(self._take(keys=[self._credit], args=[name, step]))

    def wait_change(self, timeout: float) -> None:
        """Block until a change is published or ``timeout`` passed (call from one thread)."""
        with _reachable():
            if self._pubsub is None:
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(self.channel)
            self._pubsub.get_message(timeout=timeout)

    def wake(self) -> None:
        """End a :meth:`wait_change` now (at shutdown): publish without a change."""
        with _reachable():
            self._client.publish(self.channel, "wake")

    def close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
        self._client.close()
