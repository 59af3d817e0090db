"""Supervision primitives: restart backoff, circuit breaker, liveness probes.

Pure where possible (clock and randomness are passed in) so the policies are
unit-tested without processes (ORCH-POOL-3007, ORCH-POOL-3015, ORCH-POOL-3016).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

__all__ = ["Backoff", "CircuitBreaker", "Counters", "probe_until_unresponsive", "wait_idle"]


@dataclass
class Backoff:
    """Exponential backoff with multiplicative jitter: ``initial * 2**n``, capped.

    The jitter spreads restarts of many replicas that failed together (a
    driver reset) so they do not hammer the host at the same instant.
    """

    initial_s: float
    max_s: float
    jitter: float = 0.2
    rng: Callable[[], float] = random.random
    attempt: int = 0

    def next(self) -> float:
        base = min(self.max_s, self.initial_s * (2.0**self.attempt))
        self.attempt += 1
        spread = base * self.jitter * (2.0 * self.rng() - 1.0)  # ±jitter
        return max(0.0, min(self.max_s, base + spread))

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class CircuitBreaker:
    """Opens after ``threshold`` failures within ``window_s`` (restart storms bounded)."""

    threshold: int
    window_s: float
    clock: Callable[[], float] = time.monotonic
    failures: deque[float] = field(default_factory=deque)
    open: bool = False

    def record_failure(self) -> bool:
        """Count one failure; True when the breaker is (now) open."""
        now = self.clock()
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.window_s:
            self.failures.popleft()
        if len(self.failures) >= self.threshold:
            self.open = True
        return self.open

    def reset(self) -> None:
        self.failures.clear()
        self.open = False


@dataclass
class Counters:
    """Supervision counters of one PoolManager (exported by pool-managerd)."""

    restarts: int = 0
    crashes: int = 0  # unexpected engine exits
    unresponsive_kills: int = 0  # engines killed after failed liveness probes
    preload_ok: int = 0
    preload_failed: int = 0
    start_failures: int = 0  # readiness gate failures and timeouts
    breaker_opened: int = 0
    breaker_resets: int = 0  # replicas restarted by reset() (ORCH-3026)
    provision_retries: int = 0  # failed provisionings tried again (ORCH-3027)
    driver_resets: int = 0  # NVML-reported GPU resets (0 without GPUs)
    reloads: int = 0
    reload_rollbacks: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


async def probe_until_unresponsive(
    base_url: str,
    *,
    interval_s: float,
    timeout_s: float,
    failures: int,
    path: str = "/health",
) -> str:
    """Probe ``path`` until ``failures`` consecutive probes got no answer.

    Any HTTP answer counts as alive: a busy llama-server answers slowly or
    with 503 while its slots are full, and that must not flap the replica.
    Only silence (connection refused, reset or ``timeout_s`` elapsed) counts.
    Returns a description of the last failure.
    """
    consecutive = 0
    last = ""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            await asyncio.sleep(interval_s)
            try:
                async with http.get(base_url + path) as resp:
                    await resp.read()
                consecutive = 0
                continue
            except TimeoutError:
                last = f"no answer to {path} within {timeout_s:g}s"
            except aiohttp.ClientError as exc:
                last = f"{path}: {type(exc).__name__}: {exc}"
            consecutive += 1
            if consecutive >= failures:
                return f"{consecutive} consecutive liveness probes failed ({last})"


async def wait_idle(base_url: str, *, timeout_s: float = 3.0, poll_s: float = 0.05) -> bool:
    """Wait until llama-server's ``/slots`` shows no slot processing; False on timeout.

    llama-server holds off SIGTERM while a slot still streams to a client
    (measured: 10 s until our SIGKILL) and notices a closed client only at its
    next token; a drained engine is given that moment before it is stopped.
    Any error (no ``/slots``, engine gone) ends the wait at once.
    """
    timeout = aiohttp.ClientTimeout(total=1.0)
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(base_url + "/slots") as resp:
                    if resp.status != 200:
                        return True
                    slots = await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                return True
            if not any(isinstance(s, dict) and s.get("is_processing") for s in slots):
                return True
            await asyncio.sleep(poll_s)
    return False
