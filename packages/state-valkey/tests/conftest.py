"""A real valkey-server for the package's tests, provisioned by the package itself.

One server per test session (started by :class:`EmbeddedServer`, stopped by PID
at the end even on failure); each test uses its own key prefix. A missing
server is a skip on a developer machine and a failure under
``REQUIRE_REAL_LLAMA=1`` (CI), never a silent pass (ORCH-2514).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from llama_orch.state_valkey import EmbeddedServer, ServerUnavailable


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedServer(tmp_path_factory.mktemp("valkey"))
    try:
        url = server.start()
    except ServerUnavailable as exc:
        if os.environ.get("REQUIRE_REAL_LLAMA") == "1":
            pytest.fail(f"REQUIRE_REAL_LLAMA=1 but no valkey-server could be started: {exc}")
        pytest.skip(f"no valkey-server: {exc}")
    try:
        yield url
    finally:
        server.stop()
