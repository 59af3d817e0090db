"""The one lifespan of orchestratord (STYLE rule 8).

``serve(config, shutdown_trigger=...)`` acquires everything in an
``AsyncExitStack`` and releases it in reverse: the HTTP listener comes up
first (so health and progress are visible while engines provision), the
embedded pool manager starts in the background, and on shutdown admission
stops, running tasks get ``shutdown_grace_s`` to finish, open streams end
with a final event, and every engine process is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from llama_orch.core.adapter_api import load_adapter_class
from llama_orch.core.config import Config

from .app import build_app
from .auth import Authenticator, load_keys
from .discovery import PoolDiscovery, Resolver, resolve_addresses
from .endpoints import connect_endpoints
from .errors import StartupError
from .remote import RemotePoolManagerClient
from .service import Orchestrator
from .tracing import INSTANCE_ID
from .uvserve import serve_uvicorn, tls_context
from .writes import coalesce_hypercorn_writes

if TYPE_CHECKING:
    from llama_orch.pool_managerd.pool import PoolManager

__all__ = ["serve"]

_log = logging.getLogger("llama_orch.orchestratord")


def _bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    # ORCH-2816: asyncio sets TCP_NODELAY only on accepted sockets whose proto says
    # TCP (uvicorn serves this object; hypercorn re-creates it from the descriptor)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # one of --workers N on this port (ORCH-2752)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    on_listening: Callable[[str, Orchestrator], None] | None = None,
    progress: Callable[[str], None] | None = None,
    resolver: Resolver = resolve_addresses,
    reuse_port: bool = False,
) -> None:
    for pool_cfg in config.pools:
        load_adapter_class(pool_cfg.engine)  # a missing adapter fails at startup (ORCH-3002)
    auth = Authenticator(config.auth, load_keys(config.auth))  # no keys: no start (ORCH-8001)
    if not config.auth.enabled:
        _log.warning("authentication is disabled (auth.enabled: false): development only")
    orch = Orchestrator(config)
    if orch.state is not None:  # ORCH-2544: in every log line of this instance from here on
        INSTANCE_ID.set(orch.state.instance)
    remote_ids = {pid for m in config.pool_managers for pid in m.pools}
    remote_ids |= {pid for d in config.pool_manager_discovery for pid in d.pools}  # ORCH-6230
    embedded = [p for p in config.pools if not p.endpoints and p.id not in remote_ids]
    # Token errors fail startup before anything listens (ORCH-3023).
    remotes = [RemotePoolManagerClient(m, orch) for m in config.pool_managers]
    # Discovered pool-managerds join and leave this same list (ORCH-6231).
    discoveries = [
        PoolDiscovery(d, orch, remotes, resolver=resolver) for d in config.pool_manager_discovery
    ]
    stop = asyncio.Event()
    trigger = shutdown_trigger or stop.wait

    async with contextlib.AsyncExitStack() as stack:
        sock = _bind(config.server.host, config.server.port, reuse_port=reuse_port)
        stack.callback(sock.close)  # a no-op once the server closed or adopted it
        host, port = sock.getsockname()[:2]
        url = f"http://{host}:{port}"

        if orch.state is not None:  # ORCH-2520: the store first, closed after shutdown
            await orch.state.start()
            stack.push_async_callback(orch.state.close)
            await orch.catalog.share(orch.state.store)  # one catalog (ORCH-3383)
            stack.push_async_callback(orch.catalog.close)
        background: list[asyncio.Task[None]] = []
        manager: PoolManager | None = None

        async def shutdown_all() -> None:
            await orch.shutdown(config.server.shutdown_grace_s, beside=background)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if manager is not None:
                await manager.stop()

        # Entered before anything starts: a failed start stops what did (ORCH-4123).
        stack.push_async_callback(shutdown_all)
        orch.start()
        for pool in orch.pools.values():
            if pool.config.endpoints:
                background.append(asyncio.create_task(connect_endpoints(pool)))
        for remote in remotes:
            background.append(asyncio.create_task(remote.run(), name=f"remote-{remote.name}"))
        for found in discoveries:
            background.append(asyncio.create_task(found.run(), name=f"discovery-{found.cfg.name}"))

        if embedded:
            try:
                from llama_orch.pool_managerd.pool import PoolManager
            except ImportError as exc:
                raise StartupError(
                    "the config lists pools without endpoints, which need the embedded pool "
                    "manager: pip install 'llama-orch-orchestratord[embedded]'"
                ) from exc
            managed = msgspec.structs.replace(config, pools=embedded)
            # The pool manager logs its own progress; ``progress`` is for callers
            # that show it elsewhere.
            manager = PoolManager(managed, on_change=orch.on_replica_change, progress=progress)
            manager.model_provider = orch.catalog.provide  # trust before load (ORCH-3313)
            background.append(asyncio.create_task(manager.start(), name="pool-manager-start"))

        hc: HypercornConfig | None = None
        ssl_context: ssl.SSLContext | None = None
        if config.server.http_server == "uvicorn":  # ORCH-2810
            ssl_context = tls_context(config.server.certfile, config.server.keyfile)
        else:
            hc = _hypercorn_config(config, sock)
        if config.server.certfile is not None:
            url = f"https://{host}:{port}"
        _log.info("orchestratord listening on %s", url)
        if on_listening is not None:
            on_listening(url, orch)

        async def drain_then_close() -> None:
            # Streams end with their final event before the listener closes.
            await trigger()
            _log.info("shutting down: admission stopped, draining")
            # the probes and pool-manager clients stop before the adapters close (ORCH-2817)
            await orch.shutdown(config.server.shutdown_grace_s, beside=background)

        app = build_app(orch, manager, remotes, auth=auth)
        if hc is None:
            await serve_uvicorn(
                app,
                sock,
                max_head_bytes=config.limits.max_header_bytes,  # ORCH-8012
                ssl_context=ssl_context,
                shutdown_trigger=drain_then_close,
            )
            return
        coalesce_hypercorn_writes()  # ORCH-2766: one socket write per connection and turn
        # hypercorn's Framework union does not include Starlette's ASGIApp alias (same protocol)
        await hypercorn_serve(app, hc, shutdown_trigger=drain_then_close)  # type: ignore[arg-type]


def _hypercorn_config(config: Config, sock: socket.socket) -> HypercornConfig:
    hc = HypercornConfig()
    # Hypercorn adopts the descriptor and closes it at shutdown.
    hc.bind = [f"fd://{sock.detach()}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = 1.0
    hc.keep_alive_timeout = 30.0
    hc.h11_max_incomplete_size = config.limits.max_header_bytes  # ORCH-8012
    hc.h2_max_header_list_size = config.limits.max_header_bytes
    hc.include_server_header = False
    if config.server.certfile is not None:  # ORCH-8030
        hc.certfile, hc.keyfile = config.server.certfile, config.server.keyfile
        try:
            hc.create_ssl_context()
        except (OSError, ValueError) as exc:
            raise StartupError(f"TLS certfile/keyfile unusable: {exc}") from exc
    return hc
