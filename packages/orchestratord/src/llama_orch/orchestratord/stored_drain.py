"""A pool drain applied by every instance that shares a state store (ORCH-2585..2590).

Without a store a drain (ORCH-1604) is this process's business. With one, the
instance that takes ``POST /v1/pools/{id}/drain`` (or retires a catalog entry)
records the drain at the store first (``StateStore.drain_pool``): from that
step on the store refuses the pool's submits and dispatches none of its tasks,
whatever any instance knows, and puts a ``drain`` message on the control channel
of every live instance. Each instance that hears of it (that message; at startup
and every heartbeat round through ``drains()``, for one it missed) marks the pool
draining, so its admission refuses it and its health shows it, and runs the same
drain a request to it would (``PoolControls``), with the time left to the store's
deadline: its replicas stop, and at the deadline the tasks it runs end with one
``POOL_UNAVAILABLE`` and the pool's queued tasks end at the store. A reload that
brings the pool back clears the drain at the store, and every instance reopens it.

The instance that took the request answers once every task of the pool at the drain's
step has its terminal at the store, and counts them all, whichever instance ran them
(ORCH-2609, ORCH-2610: :meth:`StoredDrains.settle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar

import msgspec
from llama_orch.core.api import ErrorEvent
from llama_orch.core.errors import ErrorCode
from llama_orch.core.state_store import (
    TERMINAL_KINDS,
    Control,
    Event,
    LoggedEvent,
    PoolDrain,
    StateStore,
)

from .pools import Pool

__all__ = ["DrainRunner", "StoredDrains"]

_log = logging.getLogger("llama_orch.orchestratord")

# what a drain request to this instance runs: (pool, seconds left to the deadline)
DrainRunner = Callable[[Pool, float], Awaitable[object]]
# set inside the drain this instance runs because another one recorded it
_following: ContextVar[bool] = ContextVar("llama_orch_following_drain", default=False)


class StoredDrains:
    """The drains of this instance's pools as the store records them."""

    def __init__(self, store: StateStore, pools: dict[str, Pool], lease_ms: int) -> None:
        self.store = store
        self.pools = pools
        self.lease_ms = lease_ms
        self._run: DrainRunner | None = None
        self._reopen: Callable[[Pool], None] | None = None
        self._here: set[str] = set()  # pools this instance drains (or drained)
        self._learned: dict[str, float] = {}  # heard before attach(): local deadline
        self._following: dict[str, asyncio.Task[None]] = {}
        # a heartbeat round's read must not reopen a pool whose drain this instance was
        # recording meanwhile (its read may predate the drain's step at the store)
        self._recording: set[str] = set()
        self._generation = 0
        self._changed = asyncio.Event()  # pulsed when a pool's draining flag changes here

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked whenever a drain or an undrain
        reaches this instance (no polling); False on timeout."""
        end = time.monotonic() + timeout_s
        while not predicate():
            left = end - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):  # ORCH-2817: never drops a cancel
                    await self._changed.wait()
        return True

    def attach(self, run: DrainRunner, reopen: Callable[[Pool], None]) -> None:
        """The app's drain (``PoolControls``) and the undo of what it held; drains
        heard before (at startup) start now."""
        self._run, self._reopen = run, reopen
        learned, self._learned = self._learned, {}
        for pool_id, at in learned.items():
            pool = self.pools.get(pool_id)
            if pool is not None and pool_id in self._here:
                self._start(pool, max(0.0, at - time.monotonic()))

    async def record(self, pool: Pool, deadline_s: float) -> PoolDrain:
        """ORCH-2588: this instance drains ``pool``: at the store first; the drain as
        the store answers it: the time left to its deadline (the first drain's, if the
        pool was already drained) and the pool's tasks at its step (ORCH-2609)."""
        pool.draining = True
        self._here.add(pool.id)
        self._recording.add(pool.id)
        self._generation += 1
        try:
            return await self.store.drain_pool(pool.id, round(deadline_s * 1000))
        finally:
            self._recording.discard(pool.id)
            self._generation += 1

    @staticmethod
    def answering() -> bool:
        """Whether the drain running here is a request to this instance (not one it
        follows because another instance recorded it)."""
        return not _following.get()

    async def settle(self, pool: Pool, tasks: Sequence[str], until: float) -> tuple[int, int]:
        """ORCH-2610: wait until each of ``tasks`` has its terminal in the store's log
        (the logs of those still without one read as they are appended), at the latest
        until ``until`` (``time.monotonic()``); ``(finished, ended)``: the tasks whose
        terminal is an ``end`` that is not a cancel's, and those ended ``POOL_UNAVAILABLE``."""
        waits = [asyncio.ensure_future(self._terminal(tid)) for tid in tasks]
        if not waits:
            return 0, 0
        done, pending = await asyncio.wait(waits, timeout=max(0.0, until - time.monotonic()))
        for w in pending:
            w.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        finished = ended = 0
        for tid, w in zip(tasks, waits, strict=True):
            ev = w.result() if w in done and w.exception() is None else None
            if ev is None:
                _log.warning("pool %s drain: task %s has no terminal at the store", pool.id, tid)
                continue
            data = msgspec.json.decode(ev.data)
            if ev.kind == "end" and data.get("reason") != "canceled":
                finished += 1
            elif ev.kind == "error" and data.get("code") == ErrorCode.POOL_UNAVAILABLE:
                ended += 1
        return finished, ended

    async def _terminal(self, task_id: str) -> LoggedEvent | None:
        view = await self.store.task(task_id)
        if view is None:
            return None  # forgotten after its retention
        # from the last event on: an ended task's terminal at once, else the next ones
        last = None
        async for ev in self.store.tail(task_id, max(-1, view.next_seq - 2)):
            last = ev  # the tail ends with the terminal
        return last if last is not None and last.kind in TERMINAL_KINDS else None

    async def end_queued(self, pool: Pool, message: str) -> set[str]:
        """ORCH-2589: every task still queued in the pool ends at the store, whichever
        instance admitted it; their ids."""
        terminal = ErrorEvent(
            code=ErrorCode.POOL_UNAVAILABLE,
            message=message,
            engine=pool.engine,
            pool_id=pool.id,
            retriable=True,
        )
        return set(await self.store.end_queued(pool.id, Event("error", _encode(terminal))))

    async def reopened(self, pool: Pool) -> None:
        """ORCH-2590: a reload here brought ``pool`` back: so does every instance."""
        pool.draining = False
        self._here.discard(pool.id)
        await self.store.undrain_pool(pool.id)

    # ------------------------------------------------------------ hearing of drains

    def heard(self, msg: Control) -> asyncio.Task[None]:
        """A ``drain`` / ``undrain`` on this instance's control channel (ORCH-2585)."""
        return asyncio.get_running_loop().create_task(self._heard(msg))

    async def _heard(self, msg: Control) -> None:
        try:
            if msg.op == "undrain":
                self._reopened_elsewhere(msg.pool_id)
                return
            for drain in await self.store.drains():  # the time left to its deadline
                if drain.pool == msg.pool_id:
                    self._follow(drain)
        except Exception:
            _log.exception("pool %s: a drain message could not be applied", msg.pool_id)

    async def sync(self) -> None:
        """The store's drains now: startup, and each heartbeat round (a message missed
        while this instance was not listed as live)."""
        generation = self._generation
        drained = await self.store.drains()
        for drain in drained:
            self._follow(drain)
        if generation != self._generation or self._recording:
            return  # a drain recorded meanwhile may postdate this read
        names = {d.pool for d in drained}
        for pool_id in sorted(self._here - names):
            self._reopened_elsewhere(pool_id)

    def _follow(self, drain: PoolDrain) -> None:
        pool = self.pools.get(drain.pool)
        if pool is None:
            return
        pool.draining = True  # admission refuses it at once (ORCH-2588)
        self._pulse()
        if drain.pool in self._here:
            return  # this instance's own drain, or one it already follows
        self._here.add(drain.pool)
        left = drain.deadline_in_ms / 1000
        _log.warning("pool %s drained at the store: draining here too", pool.id)
        if self._run is None:
            self._learned[pool.id] = time.monotonic() + left
            return
        self._start(pool, left)

    def _start(self, pool: Pool, left_s: float) -> None:
        run = self._run
        assert run is not None

        async def follow() -> None:
            _following.set(True)  # this task's own context: its drain answers no one
            try:
                await run(pool, left_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("pool %s: the drain the store recorded failed here", pool.id)

        task = asyncio.get_running_loop().create_task(follow(), name=f"drain-{pool.id}")
        self._following[pool.id] = task
        task.add_done_callback(lambda t: self._done(pool.id, t))

    def _done(self, pool_id: str, task: asyncio.Task[None]) -> None:
        if self._following.get(pool_id) is task:
            del self._following[pool_id]

    def _reopened_elsewhere(self, pool_id: str) -> None:
        pool = self.pools.get(pool_id)
        if pool_id not in self._here:
            return  # never drained here, or this instance's own reload
        self._here.discard(pool_id)
        self._learned.pop(pool_id, None)
        task = self._following.pop(pool_id, None)
        if task is not None:
            task.cancel()  # its deadline no longer applies
        if pool is not None:
            _log.warning("pool %s brought back at the store: serving again", pool_id)
            pool.draining = False
            if self._reopen is not None:
                self._reopen(pool)
            self._pulse()

    async def close(self) -> None:
        tasks = list(self._following.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_encode = msgspec.json.Encoder().encode
