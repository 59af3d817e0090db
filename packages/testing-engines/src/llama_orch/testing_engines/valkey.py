"""A real valkey-server for tests, provisioned and stopped by the project's own code.

``with valkey_server(directory) as url:`` starts one :class:`EmbeddedServer`
in ``directory`` and stops it by PID on exit, also when the test fails. A
server that cannot be started is a skip on a developer machine and a failure
under ``REQUIRE_REAL_LLAMA=1`` (CI), never a silent pass (ORCH-2514, ORCH-4001).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from llama_orch.state_valkey import EmbeddedServer, ServerUnavailable

from .llamacpp import unavailable

__all__ = ["valkey_server"]


@contextlib.contextmanager
def valkey_server(
    directory: Path, *, binary: tuple[Path, dict[str, str]] | None = None
) -> Iterator[str]:
    """Yields the server's ``redis://`` URL; ``binary``: (path, extra env) of a
    particular server build, by default the one ``find_server_binary()`` finds."""
    server = EmbeddedServer(directory, binary=binary)
    try:
        url = server.start()
    except ServerUnavailable as exc:
        server.stop()
        unavailable(f"no valkey-server could be started: {exc}")
    try:
        yield url
    finally:
        server.stop()
