"""``orchestratord --workers N``: N processes serving one port (issue #20, ORCH-2752).

The parent starts N copies of itself (``--worker``), each of which binds the
configured host and port with ``SO_REUSEPORT``: the kernel spreads connections
over them, so the relay path uses N cores. They share nothing in memory; queue,
fairness, quotas, rate limits, cancels and streams of any task go through the
shared state store (``state: {backend: valkey, url: ...}``, issue #13), exactly
as for N instances on N hosts (test-harness/ha). So N > 1 is refused
(ORCH-2753) without a store every process reaches, with an embedded pool (each
worker would start its own engines) and with port 0 (each would get a different
port).

The parent only supervises: SIGTERM/SIGINT are passed to every worker (each
drains as a single process does), and when one worker exits the others are
stopped and its exit status is the parent's, so that a service manager restarts
the whole set.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

from llama_orch.core.config import Config

__all__ = ["refusal", "run_workers"]

_log = logging.getLogger("llama_orch.orchestratord")


def refusal(config: Config, n: int) -> str | None:
    """Why ``config`` cannot run as ``n`` worker processes (ORCH-2753), or None."""
    if n <= 1:
        return None
    state = config.state
    if state is None or state.backend == "memory":
        return (
            f"--workers {n} needs a state store shared by the processes "
            "(state: {backend: valkey, url: ...}); the memory backend is per process"
        )
    if state.backend == "valkey" and not state.url:
        return f"--workers {n} needs state.url: each process would start its own Valkey"
    remote = {pid for m in config.pool_managers for pid in m.pools}
    embedded = [p.id for p in config.pools if not p.endpoints and p.id not in remote]
    if embedded:
        return (
            f"--workers {n}: pools {embedded} are embedded (no endpoints, no pool-managerd); "
            "each process would start its own engines"
        )
    if config.server.port == 0:
        return f"--workers {n} needs a fixed server.port (port 0 gives each process its own)"
    return None


def _status(code: int | None) -> int:
    """An exit status: a worker killed by signal S counts as 128 + S, like a shell's."""
    if code is None:
        return 0
    return 128 - code if code < 0 else code


def run_workers(n: int, argv: list[str]) -> int:
    """Run ``n`` workers with ``argv`` (the parent's, without ``--workers``) and wait."""
    cmd = [sys.executable, "-m", "llama_orch.orchestratord.main", *argv, "--worker"]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop_all(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def forward_hup(signum: int, _frame: FrameType | None) -> None:
        for child in children:  # reload the policies everywhere (ORCH-8570)
            if child.poll() is None:
                child.send_signal(signal.SIGHUP)

    old = {s: signal.signal(s, stop_all) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, forward_hup)
    try:
        for _ in range(n):
            children.append(subprocess.Popen(cmd))
        _log.info(
            "orchestratord: %d worker processes on one port: %s",
            n,
            " ".join(str(c.pid) for c in children),
        )
        status = 0
        while True:
            running = [c for c in children if c.poll() is None]
            ended = [c for c in children if c.returncode is not None]
            if not running:
                break
            if ended and not stopping:
                first = ended[0]
                status = first.returncode or 0
                _log.error(
                    "worker %d exited with status %s: stopping the other workers",
                    first.pid,
                    first.returncode,
                )
                stop_all(signal.SIGTERM, None)
            time.sleep(0.2)
        codes = [_status(c.returncode) for c in children]
        return _status(status) or max(codes)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        for s, handler in old.items():
            signal.signal(s, handler)
