"""Lease keeping for the tasks an instance runs (ORCH-2511, ORCH-2516).

:class:`LeaseKeeper` holds ``{task_id: epoch}`` for the tasks this instance
dispatched or claimed, renews them in one store call per round, and reports
every lease it lost (taken over, canceled, ended) through ``on_lost`` so the
runner can close its engine stream. When the store cannot be reached for longer
than one lease, the instance can no longer prove ownership: every held lease is
reported lost (fail closed). The clock is passed in; the loop awaits its stop
event with a timeout between rounds, which is its period, not a poll of state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .state_store import Reaped, StateStore, StoreUnavailable

__all__ = ["LeaseKeeper"]


class LeaseKeeper:
    def __init__(
        self,
        store: StateStore,
        instance: str,
        lease_ms: int,
        *,
        on_lost: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.instance = instance
        self.lease_ms = lease_ms
        self._on_lost = on_lost
        self._clock = clock
        self._held: dict[str, int] = {}
        self._last_ok = clock()

    @property
    def held(self) -> dict[str, int]:
        return dict(self._held)

    def hold(self, task_id: str, epoch: int) -> None:
        """Start renewing ``task_id`` under ``epoch`` (after dispatch or a claim)."""
        self._held[task_id] = epoch

    def release(self, task_id: str) -> None:
        """Stop renewing (the task ended or was requeued by this instance)."""
        self._held.pop(task_id, None)

    def _lose(self, task_ids: list[str]) -> None:
        for tid in task_ids:
            if self._held.pop(tid, None) is not None:
                self._on_lost(tid)

    async def renew_once(self) -> list[str]:
        """One renewal round; returns the task ids lost in it."""
        if not self._held:
            self._last_ok = self._clock()
            return []
        try:
            lost = await self.store.renew(self.instance, dict(self._held), self.lease_ms)
        except StoreUnavailable:
            if (self._clock() - self._last_ok) * 1000 < self.lease_ms:
                return []
            lost = list(self._held)  # ORCH-2516: ownership can no longer be proven
        else:
            self._last_ok = self._clock()
        self._lose(lost)
        return lost

    async def reap_once(self, max_requeues: int = 2) -> list[Reaped]:
        """Reap expired leases of any instance; claimed tasks become held by this one."""
        reaped = await self.store.reap(self.instance, self.lease_ms, max_requeues)
        for r in reaped:
            if r.outcome == "claimed":
                self.hold(r.task_id, r.epoch)
        return reaped

    async def run(self, stop: asyncio.Event, *, every_s: float | None = None) -> None:
        """Renew every ``every_s`` (default a fifth of the lease) until ``stop`` is set."""
        period = every_s if every_s is not None else self.lease_ms / 5000
        while not stop.is_set():
            await self.renew_once()
            try:
                async with asyncio.timeout(period):  # ORCH-2817: never drops a cancel
                    await stop.wait()
            except TimeoutError:
                pass
