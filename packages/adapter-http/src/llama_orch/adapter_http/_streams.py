"""Open streams of one adapter, each with its lazy idle timer.

The idle timeout is one timer per stream, re-armed lazily: a read only
stamps ``last_data``; when the timer fires early it moves itself to
``last_data + idle``. An ``asyncio.timeout`` around every read costs a
timer-heap push and a cancel per token (5 % of orchestratord's CPU at 64
streams, issue #5 profile; ORCH-4103).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ._lean import StreamConn

__all__ = ["CancelledByCaller", "IdleTimeout", "InFlight"]


class CancelledByCaller(Exception):
    """Wakes a stream reader blocked on a response that cancel() closed."""


class IdleTimeout(Exception):
    """Wakes a stream reader when the engine sent nothing for ``idle_timeout_s``."""


@dataclass(eq=False, slots=True)
class InFlight:
    conn: StreamConn
    idle_s: float
    last_data: float = 0.0
    cancelled: bool = False
    timer: asyncio.TimerHandle | None = None
    released: bool = False  # the response was closed, released or handed to a drain

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self.last_data = loop.time()
        self.timer = loop.call_at(self.last_data + self.idle_s, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self.last_data + self.idle_s
        if loop.time() < due:
            self.timer = loop.call_at(due, self._check, loop)
            return
        self.timer = None
        self.conn.fail(IdleTimeout())

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def cancel(self, reason: BaseException) -> None:
        """Wake the reader with ``reason``, then drop the socket."""
        self.conn.fail(reason)
        self.conn.close()
