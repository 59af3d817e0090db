"""pool-managerds found by name resolution (ORCH-6230..6232).

On Kubernetes one pool-managerd runs per GPU node (a DaemonSet) and pods come
and go with the nodes. A ``pool_manager_discovery`` entry names a DNS name
(the DaemonSet's headless Service) whose A/AAAA records are the pool-managerd
pods. :class:`PoolManagerDiscovery` resolves it at start and every
``interval_s``: a new address gets a :class:`RemotePoolManagerClient` (stream,
lease, commands: ORCH-3023..3025), an address that is gone loses its client,
and its replicas leave placement as ``stopped`` (``left discovery: ...``).

Only a definite "no such name" counts as "no pool-managerd"; a resolver that
times out or fails keeps the set it had, so a DNS hiccup does not take every
replica out of placement (the leases still catch a pool-managerd that died).
The resolver is a seam (``resolver=``) so tests can feed address sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from llama_orch.core.config import PoolManagerDiscovery, RemotePoolManager

from .remote import RemotePoolManagerClient, pool_token

if TYPE_CHECKING:
    from .service import Orchestrator

__all__ = ["PoolDiscovery", "Resolver", "client_name", "resolve_addresses"]

_log = logging.getLogger("llama_orch.orchestratord")

# (host, port) -> the addresses it resolves to; raises socket.gaierror like getaddrinfo.
Resolver = Callable[[str, int], Awaitable[set[str]]]
RESOLVE_TIMEOUT_S = 10.0
# getaddrinfo's answers for "this name has no address": an empty set, not a failure
_NO_ADDRESS = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


async def resolve_addresses(host: str, port: int) -> set[str]:
    """A and AAAA records of ``host`` through the system resolver (getaddrinfo)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return {str(info[4][0]) for info in infos}


def client_name(source: str, address: str) -> str:
    """``<name>-<address>``, dots, colons and zone marks as ``-`` (ORCH-6230)."""
    return f"{source}-" + address.lower().replace(".", "-").replace(":", "-").replace("%", "-")


def _url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


class PoolDiscovery:
    """Keeps ``clients`` equal to the pool-managerds ``cfg.dns`` resolves to."""

    def __init__(
        self,
        cfg: PoolManagerDiscovery,
        orch: Orchestrator,
        clients: list[RemotePoolManagerClient],
        *,
        resolver: Resolver = resolve_addresses,
    ) -> None:
        self.cfg = cfg
        self._orch = orch
        self._clients = clients  # shared with the control plane: commands follow the set
        self._resolve = resolver
        self._running: dict[str, tuple[RemotePoolManagerClient, asyncio.Task[None]]] = {}
        pool_token(self._entry("probe"))  # no token: a startup error, before anything listens

    def _entry(self, address: str) -> RemotePoolManager:
        c = self.cfg
        return RemotePoolManager(
            name=client_name(c.name, address),
            url=_url(c.scheme, address, c.port),
            pools=list(c.pools),
            token=c.token,
            token_file=c.token_file,
            lease_ttl_s=c.lease_ttl_s,
            reconnect_max_s=c.reconnect_max_s,
        )

    @property
    def addresses(self) -> set[str]:
        return set(self._running)

    async def run(self) -> None:
        """Resolve now and every ``interval_s`` until cancelled; then stop every client."""
        try:
            while True:
                await self.refresh()
                await asyncio.sleep(self.cfg.interval_s)
        finally:  # shutting down: the streams close, the replicas are left as they are
            for address in list(self._running):
                client, task = self._running.pop(address)
                with contextlib.suppress(ValueError):
                    self._clients.remove(client)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def refresh(self) -> None:
        """One resolution and the adds and removals it implies (ORCH-6231)."""
        c = self.cfg
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                found = await self._resolve(c.dns, c.port)
        except socket.gaierror as exc:
            if exc.errno not in _NO_ADDRESS:
                _log.warning(
                    "discovery %s: cannot resolve %s (%s): keeping %d pool-managerd(s)",
                    c.name,
                    c.dns,
                    exc,
                    len(self._running),
                )
                return
            found = set()
        except (OSError, TimeoutError, ValueError) as exc:  # ValueError: an IDNA error
            _log.warning(
                "discovery %s: cannot resolve %s (%s): keeping %d pool-managerd(s)",
                c.name,
                c.dns,
                exc or type(exc).__name__,
                len(self._running),
            )
            return
        for address in sorted(found - self._running.keys()):
            self._add(address)
        for address in sorted(self._running.keys() - found):
            await self._remove(address, f"left discovery: {c.dns} no longer resolves to {address}")

    def _add(self, address: str) -> None:
        client = RemotePoolManagerClient(self._entry(address), self._orch)
        task = asyncio.create_task(client.run(), name=f"remote-{client.name}")
        self._running[address] = (client, task)
        self._clients.append(client)
        _log.info(
            "discovery %s: pool-managerd %s at %s", self.cfg.name, client.name, client.cfg.url
        )

    async def _remove(self, address: str, why: str) -> None:
        client, task = self._running.pop(address)
        with contextlib.suppress(ValueError):
            self._clients.remove(client)  # no command goes to it any more
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        client.forget(f"{why} (pool-managerd {client.name})")
