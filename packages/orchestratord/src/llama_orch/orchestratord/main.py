"""Console script: ``orchestratord --config FILE``, ``orchestratord init``,
``orchestratord keygen``, ``orchestratord hash-key``.

Logs are JSON lines on stderr (ORCH-1504, ORCH-7030) with a ``msg`` field,
the task fields of ARCHITECTURE §8 when present and the request's
``correlation_id``. Signals only set an event; the
lifespan in :mod:`.serve` does all cleanup.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable

import msgspec
from llama_orch.core.adapter_api import AdapterLoadError
from llama_orch.core.config import Config, load_config
from llama_orch.core.errors import OrchError

from .auth import MIN_KEY_LENGTH, hash_key, new_key
from .errors import StartupError
from .init import init_command
from .logline import JsonFormatter, LineHandler, flushes_at_line_end
from .policies import reload_policies
from .serve import serve
from .service import Orchestrator
from .tracing import CorrelationFilter
from .workers import refusal, run_workers

__all__ = ["JsonFormatter", "LineHandler", "configure_logging", "flushes_at_line_end", "main"]


def configure_logging(level: str = "INFO") -> None:
    # ORCH-2781: the daemon's records skip what JsonFormatter never prints: the
    # thread, process and multiprocessing names (the switches of the logging HOWTO's
    # "Optimization" section). The lines are the same. (The caller's frame walk costs
    # 0.4 us a record and its switch is private: kept.)
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CorrelationFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)


async def _run(config: Config, path: str | None = None, *, reuse_port: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running: list[Orchestrator] = []
    if path is not None:  # SIGHUP: the config file's `policies` (ORCH-8570) and keys (ORCH-8009)
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(running, path))
    await serve(
        config,
        shutdown_trigger=stop.wait,
        on_listening=lambda _url, o: running.append(o),
        reuse_port=reuse_port,
    )


def _reload(running: list[Orchestrator], path: str) -> None:
    """SIGHUP: the config file read again; its `policies` (ORCH-8570) and its API keys
    (ORCH-8009) each replace the running ones, or are logged and the running ones stay."""
    log = logging.getLogger("llama_orch.orchestratord")
    try:
        cfg = load_config(path)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError, OrchError) as exc:
        log.error("SIGHUP: config %s not read, policies and keys stay: %s", path, exc)
        return
    for orch in running:
        try:
            reload_policies(orch, cfg.policies)
        except OrchError as exc:
            log.error("SIGHUP: policies not reloaded, the running set stays: %s", exc)
        if orch.auth is None:
            continue
        try:
            kept = orch.auth.reload(cfg.auth)
        except StartupError as exc:  # its message names the file or the check, never a key
            log.error("SIGHUP: API keys not reloaded, the running keys stay: %s", exc)
            continue
        log.info("SIGHUP: API keys reloaded")
        if kept:
            log.warning("SIGHUP: %s changed in the file: kept until a restart", ", ".join(kept))


def keygen(argv: list[str]) -> int:
    """Print a new key (stdout) and the config entry holding only its hash (stderr)."""
    parser = argparse.ArgumentParser(
        prog="orchestratord keygen",
        description="Make an API key; config stores only its hash (ORCH-8002).",
    )
    parser.add_argument("--id", required=True, help="key id shown in logs")
    parser.add_argument("--role", choices=["tenant", "admin"], default="tenant")
    parser.add_argument("--tenant", help="tenant of a role-tenant key")
    args = parser.parse_args(argv)
    if args.role == "tenant" and not args.tenant:
        parser.error("--tenant is required for --role tenant")
    key = new_key()
    entry = f"  - id: {args.id}\n    role: {args.role}\n"
    if args.tenant:
        entry += f"    tenant: {args.tenant}\n"
    entry += f"    hash: {hash_key(key)}\n"
    print(
        f"# add under `auth.keys:`; hand the key on stdout to its owner\n{entry}",
        end="",
        file=sys.stderr,
    )
    print(key)
    return 0


def hash_key_command(argv: list[str]) -> int:
    """Hash a key read from stdin (never argv: it would show in the process list)."""
    argparse.ArgumentParser(
        prog="orchestratord hash-key",
        description="Read an API key on stdin and print its `sha256:` hash for config.",
    ).parse_args(argv)
    key = sys.stdin.readline().strip()
    if len(key) < MIN_KEY_LENGTH:
        print(
            f"a key must have at least {MIN_KEY_LENGTH} characters; "
            "make one with `orchestratord keygen`",
            file=sys.stderr,
        )
        return 2
    print(hash_key(key))
    return 0


DESCRIPTION = """\
orchestratord is the llama-orch daemon: it admits LLM tasks into fair,
bounded queues, places them on replicas of real inference engines
(llama.cpp, vLLM, TGI, Triton), streams tokens over SSE and cancels for real.
By default it also runs the pool manager, which builds, starts and
supervises the engines your config names.

commands:
  orchestratord --config FILE   run the daemon (Ctrl-C or SIGTERM drains and stops it)
  orchestratord init            write a commented starter config with two keys
  orchestratord keygen          make an API key (the config stores only its hash)
  orchestratord hash-key        hash a key read from stdin
"""

EPILOG = """\
first run:
  orchestratord init                     # writes llama-orch.yaml, prints the keys once
  orchestratord --config llama-orch.yaml
  LLORCH_API_KEY=<admin key> llorch status

Logs are JSON lines on stderr. Exit codes: 0 stopped cleanly, 2 bad config or
startup failure. Config schema: contracts/config/config.schema.json.
"""


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """ORCH-2750: uvloop's loop unless ``--event-loop asyncio`` (None: the standard one).
    uvloop replaces asyncio's selector, transports and handles with C; under uvicorn
    it lowered the fixed CPU per request in the side-by-side bench (session 18)."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        raise StartupError(
            "--event-loop uvloop: uvloop is not installed (start with --event-loop asyncio)"
        ) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["init"]:
        return init_command(argv[1:])
    if argv[:1] == ["keygen"]:
        return keygen(argv[1:])
    if argv[:1] == ["hash-key"]:
        return hash_key_command(argv[1:])
    parser = argparse.ArgumentParser(
        prog="orchestratord",
        usage="orchestratord --config FILE [--log-level LEVEL] | init | keygen | hash-key",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="YAML or JSON config file (`orchestratord init` writes one)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--event-loop",
        default="uvloop",
        choices=["asyncio", "uvloop"],
        help="event loop: uvloop, or the standard library's (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N processes on one port (SO_REUSEPORT); needs a shared state store "
        "(state: {backend: valkey, url}) and no embedded pools (default: 1)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    log = logging.getLogger("llama_orch.orchestratord")
    try:
        config = load_config(args.config)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.error("invalid config %s: %s", args.config, exc)
        return 2
    if args.workers > 1 and not args.worker:  # ORCH-2752, ORCH-2753
        why = refusal(config, args.workers)
        if why is not None:
            log.error("cannot start: %s", why)
            return 2
        own = ["--config", args.config, "--log-level", args.log_level]
        return run_workers(args.workers, [*own, "--event-loop", args.event_loop])
    started = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
            runner.run(_run(config, args.config, reuse_port=args.worker))
    except (StartupError, AdapterLoadError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("stopped after %.1fs", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
