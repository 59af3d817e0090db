"""The ``memory`` store's control channels and liveness (ORCH-2540, ORCH-2543,
ORCH-2585): one message list per instance, read by one reader, and each
instance's heartbeat expiry on the store's clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .state_store import Control, InstanceView

__all__ = ["ControlChannels"]


class ControlChannels:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lists: dict[str, list[Control]] = {}  # per instance (ORCH-2540)
        self._base: dict[str, int] = {}  # cursor of each list's first message
        self._events: dict[str, asyncio.Event] = {}
        self._alive: dict[str, float] = {}  # instance -> heartbeat expiry (ORCH-2543)

    def send(self, instance: str, msg: Control) -> None:
        self._lists.setdefault(instance, []).append(msg)
        ev = self._events.pop(instance, None)
        if ev is not None:
            ev.set()

    def broadcast(self, msg: Control) -> None:
        """``msg`` on the channel of every live instance (ORCH-2585)."""
        for instance in self.live():
            self.send(instance, msg)

    def _end(self, instance: str) -> int:
        return self._base.get(instance, 0) + len(self._lists.get(instance, ()))

    def cursor(self, instance: str) -> str:
        return str(self._end(instance))

    async def wait(self, instance: str, cursor: str, timeout_s: float) -> tuple[str, list[Control]]:
        if self._end(instance) == int(cursor):
            ev = self._events.setdefault(instance, asyncio.Event())
            try:
                async with asyncio.timeout(timeout_s):  # ORCH-2817: never drops a cancel
                    await ev.wait()
            except TimeoutError:
                pass
        got = self._lists.get(instance, [])
        base = self._base.get(instance, 0)
        out = got[max(0, int(cursor) - base) :]
        # one reader per instance: what it has read is dropped (bounded memory)
        self._base[instance] = base + len(got)
        self._lists[instance] = []
        return str(base + len(got)), out

    def heartbeat(self, instance: str, ttl_ms: int) -> None:
        self._alive[instance] = self._clock() + ttl_ms / 1000

    def live(self) -> list[str]:
        """The instances whose heartbeat has not expired, by id."""
        now = self._clock()
        return [i for i, until in sorted(self._alive.items()) if until > now]

    def instances(self) -> list[InstanceView]:
        now = self._clock()
        for gone in [i for i, until in self._alive.items() if until <= now]:
            del self._alive[gone]
        return [
            InstanceView(instance_id=i, expires_in_ms=int((until - now) * 1000))
            for i, until in sorted(self._alive.items())
        ]
