"""The pipelined connection of ORCH-2595 for a valkey-py client: where it connects,
with its credentials and database."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

import valkey.asyncio as valkey

from ._pipe import Address, Pipe

__all__ = ["pipe_for"]


def pipe_for(client: valkey.Valkey, *, sentinel: bool) -> Pipe | None:
    """The pipelined connection of ORCH-2595 to where ``client`` connects, with its
    credentials and database; None (every call on valkey-py) for what it does not
    speak: TLS, RESP3, a credential provider, another connection class."""
    pool = client.connection_pool
    kw = pool.connection_kwargs
    if kw.get("protocol") not in (None, 2, "2") or kw.get("credential_provider") is not None:
        return None
    cls = pool.connection_class
    address: Callable[[], Awaitable[Address]]
    if sentinel:
        if cls is not valkey.SentinelManagedConnection:  # e.g. TLS
            return None
        # a SentinelConnectionPool: the primary the Sentinels name now, at each connect
        address = cast(Callable[[], Awaitable[Address]], pool.get_master_address)  # type: ignore[attr-defined]
    elif cls is valkey.UnixDomainSocketConnection:
        path = str(kw["path"])

        async def address() -> Address:
            return path
    elif cls is valkey.Connection:
        host, port = str(kw.get("host", "localhost")), int(kw.get("port", 6379))

        async def address() -> Address:
            return (host, port)
    else:
        return None
    return Pipe(
        address,
        timeout_s=float(kw.get("socket_timeout") or 10.0),
        password=kw.get("password"),
        username=kw.get("username"),
        db=int(kw.get("db") or 0),
        sentinel=sentinel,
    )
