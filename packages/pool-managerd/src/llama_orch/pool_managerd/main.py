"""``pool-managerd --config FILE``: run the pool manager in the foreground.

Every replica state change is printed to stdout as one JSON line
(:class:`~llama_orch.core.replica.ReplicaState`); provisioning progress and
logs go to stderr. SIGINT and SIGTERM only set an event; the lifespan in
:func:`serve` stops every engine before the process exits (ORCH-POOL-3010).
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
from llama_orch.core.config import Config, load_config
from llama_orch.core.replica import ReplicaState

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

    def on_change(state: ReplicaState) -> None:
        stream.write(_encoder.encode(state) + b"\n")
        stream.flush()

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pool-managerd",
        description="Provision, start and supervise llama-orch engine replicas in the "
        "foreground. Prints one JSON line per replica state change to stdout.",
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
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
