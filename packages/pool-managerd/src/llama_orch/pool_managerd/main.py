"""``pool-managerd --config FILE``: run the pool manager in the foreground.

Every replica state change is printed to stdout as one JSON line
(:class:`~llama_orch.core.replica.ReplicaState`); provisioning progress and
logs go to stderr. With a token (``pool_managerd`` config section or
``$LLAMA_ORCH_POOL_TOKEN``) the daemon also serves its authenticated HTTP API
(:mod:`.api`, ORCH-3021) for a remote orchestratord. SIGINT and SIGTERM only
set an event; the lifespan in :func:`serve` stops every engine before the
process exits (ORCH-POOL-3010).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import BinaryIO

import msgspec
from aiohttp import web
from llama_orch.core.config import Config, load_config
from llama_orch.core.replica import ReplicaState

from .api import Registry, build_api, resolve_token
from .errors import PoolManagerError
from .pool import PoolManager

__all__ = ["main", "serve"]

_encoder = msgspec.json.Encoder()


def _progress(msg: str) -> None:
    print(f"[pool-managerd] {msg}", file=sys.stderr, flush=True)


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    out: BinaryIO | None = None,
) -> None:
    """The daemon's lifespan: start the pools, wait for shutdown, stop them.

    Without ``shutdown_trigger`` the process waits for SIGINT or SIGTERM.
    """
    stream = out if out is not None else sys.stdout.buffer
    token = resolve_token(config.pool_managerd)
    registry: Registry | None = None

    def on_change(state: ReplicaState) -> None:
        stream.write(_encoder.encode(state) + b"\n")
        stream.flush()
        if registry is not None:
            registry.publish(state)

    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    installed: list[signal.Signals] = []
    if shutdown_trigger is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_requested.set)
            installed.append(sig)

        async def wait_for_signal() -> None:
            await stop_requested.wait()

        shutdown_trigger = wait_for_signal
    try:
        async with contextlib.AsyncExitStack() as stack:
            manager = PoolManager(config, on_change=on_change, progress=_progress)
            stack.push_async_callback(manager.stop)
            if token:
                registry = Registry(manager.replicas)
                await _serve_api(stack, manager, registry, token, config)
            else:
                _progress(
                    "HTTP API not served: no token (pool_managerd.token, token_file or "
                    "$LLAMA_ORCH_POOL_TOKEN)"
                )
            starting = asyncio.create_task(manager.start(), name="pool-managerd-start")
            shutdown = asyncio.ensure_future(shutdown_trigger())
            try:
                await asyncio.wait({starting, shutdown}, return_when=asyncio.FIRST_COMPLETED)
                if starting.done():
                    starting.result()  # surface a bug in start(); replica failures are states
                    ready = sum(s.ready for s in manager.replicas())
                    _progress(f"{ready}/{len(manager.replicas())} replica(s) ready; Ctrl-C to stop")
                    await shutdown
            finally:
                for task in (starting, shutdown):
                    task.cancel()
                await asyncio.gather(starting, shutdown, return_exceptions=True)
        _progress("stopped")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _serve_api(
    stack: contextlib.AsyncExitStack,
    manager: PoolManager,
    registry: Registry,
    token: str,
    config: Config,
) -> None:
    runner = web.AppRunner(
        build_api(manager, registry, token), access_log=None, shutdown_timeout=2.0
    )
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    # In reverse: the engines stop (their ``stopped`` states reach the open
    # streams), the streams end, then the runner waits for them.
    stack.callback(registry.closed.set)
    stack.push_async_callback(manager.stop)
    cfg = config.pool_managerd
    site = web.TCPSite(runner, cfg.host, cfg.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    _progress(f"HTTP API listening on http://{host}:{port}")


DESCRIPTION = """\
pool-managerd provisions, starts and supervises llama-orch engine replicas
(llama-server, vLLM, Triton) for the pools of a config, in the foreground:
it builds or finds the engine, assembles and verifies the model, gates each
replica on readiness, restarts crashed ones with backoff and a circuit
breaker, and stops every engine it started when it exits.

You need it only on a host other than orchestratord's: by default
orchestratord embeds the same pool manager. Run here, it prints one JSON line
per replica state change on stdout; with a token (`pool_managerd.token_file`
or $LLAMA_ORCH_POOL_TOKEN) it also serves the HTTP API a remote orchestratord
uses (contracts/openapi/pool-managerd.yaml).
"""

EPILOG = """\
example:
  LLAMA_ORCH_POOL_TOKEN=$(cat token) pool-managerd --config gpu-host.yaml
Exit codes: 0 stopped cleanly, 1 port in use or unreadable token, 2 bad config.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pool-managerd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="the YAML (or .json) config file orchestratord uses",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level for stderr (default: WARNING)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        print(f"pool-managerd: invalid config {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except (OSError, PoolManagerError) as exc:  # port in use, unreadable token_file
        print(f"pool-managerd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
