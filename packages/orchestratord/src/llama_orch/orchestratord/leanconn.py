"""hypercorn's per-request queue and per-connection events without empty deques (ORCH-2770).

An open SSE stream keeps its connection and its request alive for as long as the
task runs, so what hypercorn allocates per connection and per request is paid per
open stream (issue #20: 52.5 KB per open stream against a goal of 32 KB). Measured
with ``bench/memory_profile.py --mode hold`` (tracemalloc, 192 streams): hypercorn's
receive queue of a request is an :class:`asyncio.Queue` (three ``collections.deque``
and an :class:`asyncio.Event` with a fourth) and every connection has an
:class:`asyncio.Event` (``can_read``, a fifth); an empty ``deque`` allocates a block
of 64 slots up front, ~0.7 KB each, ~3.5 KB per stream for queues that hold at most
a couple of messages and waiters that exist only while one waits.

:class:`AppQueue` and :class:`LeanEvent` do the same with lists created when the
first one waits. hypercorn (0.17, 0.18) has no hook for either:
:func:`lean_hypercorn_objects` points ``hypercorn.asyncio.tcp_server``'s ``TaskGroup``
name at :class:`LeanTaskGroup` (whose ``spawn_app`` makes an :class:`AppQueue`)
and sets ``event_class`` on the worker's context (see ``writes.py`` for the same
kind of hook).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import hypercorn.asyncio.tcp_server as hypercorn_tcp
from hypercorn.asyncio.task_group import TaskGroup, _handle

__all__ = [
    "APP_QUEUE",
    "CONNECTION_RESET",
    "AppQueue",
    "LeanEvent",
    "LeanTaskGroup",
    "lean_hypercorn_objects",
    "reset_transport",
]

APP_QUEUE = "llama_orch.app_queue"
"""Scope key of the request's :class:`AppQueue`: an SSE writer watches it for the
client's ``http.disconnect`` with a callback instead of a task of its own (ORCH-2772)."""

CONNECTION_RESET: ContextVar[Callable[[], None] | None] = ContextVar(
    "llama_orch_connection_reset", default=None
)
"""The reset of the connection being served (ORCH-8024), set by hypercorn's connection
(``writes.CoalescingTCPServer``) for :meth:`LeanTaskGroup.spawn_app` to hand on."""

_LINGER_0 = struct.pack("ii", 1, 0)


def reset_transport(transport: Any) -> None:
    """ORCH-8024: close ``transport`` now with a reset (``SO_LINGER`` 0): what it and
    the kernel's send buffer held is dropped, nothing waits for a reader."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
    transport.abort()


def _wake_first(waiters: list[asyncio.Future[None]] | None) -> None:
    """Wake the first waiter that still waits (FIFO, as asyncio.Queue's)."""
    while waiters:
        w = waiters.pop(0)
        if not w.done():
            w.set_result(None)
            return


class AppQueue:
    """A bounded FIFO with ``get``/``put`` as :class:`asyncio.Queue`'s (``maxsize`` <= 0:
    unbounded); its waiters are lists made when the first one waits."""

    __slots__ = ("_getters", "_items", "_max", "_putters", "_watcher", "abort")

    def __init__(self, maxsize: int = 0) -> None:
        # ORCH-8024: resets the request's connection (set by the server's protocol)
        self.abort: Callable[[], None] | None = None
        self._items: list[Any] = []
        self._max = maxsize
        self._getters: list[asyncio.Future[None]] | None = None
        self._putters: list[asyncio.Future[None]] | None = None
        self._watcher: Callable[[Any], None] | None = None

    def watch(self, callback: Callable[[Any], None] | None) -> None:
        """Call ``callback`` with every message put from now on, and with those queued
        and not yet read (``None``: stop). It sees them; ``get`` still returns them."""
        self._watcher = callback
        if callback is not None:
            for item in list(self._items):
                callback(item)

    def qsize(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return 0 < self._max <= len(self._items)

    async def _wait(self, getters: bool) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if getters:
            if self._getters is None:
                self._getters = []
            waiters = self._getters
        else:
            if self._putters is None:
                self._putters = []
            waiters = self._putters
        waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut in waiters:
                waiters.remove(fut)
            elif not fut.cancelled():  # woken, then cancelled: hand the wake-up on
                ready = bool(self._items) if getters else not self.full()
                if ready:
                    _wake_first(waiters)
            raise

    async def get(self) -> Any:
        while not self._items:
            await self._wait(True)
        item = self._items.pop(0)
        _wake_first(self._putters)
        return item

    async def put(self, item: Any) -> None:
        while self.full():
            await self._wait(False)
        self.put_nowait(item)

    def put_nowait(self, item: Any) -> None:
        """Put ``item`` now (the caller checked ``full``, or the queue is unbounded)."""
        self._items.append(item)
        _wake_first(self._getters)
        if self._watcher is not None:
            self._watcher(item)


class LeanEvent:
    """hypercorn's ``Event`` (async ``set``/``clear``/``wait``, ``is_set``) with its
    waiters made when the first one waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    async def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for w in waiters or ():
            if not w.done():
                w.set_result(None)

    async def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if self._waiters is not None and fut in self._waiters:
                self._waiters.remove(fut)


class LeanTaskGroup(TaskGroup):
    """hypercorn's connection task group; each request's receive queue is an
    :class:`AppQueue` of the configured size."""

    async def spawn_app(
        self,
        app: Any,
        config: Any,
        scope: Any,
        send: Callable[[Any], Awaitable[None]],
    ) -> Callable[[Any], Awaitable[None]]:
        queue = AppQueue(config.max_app_queue_size)
        queue.abort = CONNECTION_RESET.get()  # ORCH-8024
        scope[APP_QUEUE] = queue
        loop = self._loop

        def call_soon(func: Callable[..., Any], *args: Any) -> Any:
            return asyncio.run_coroutine_threadsafe(func(*args), loop).result()

        sync_spawn = functools.partial(loop.run_in_executor, None)
        self.spawn(_handle, app, config, scope, queue.get, send, sync_spawn, call_soon)
        return queue.put


def lean_hypercorn_objects(context: Any = None) -> None:
    """Make hypercorn's asyncio connections use :class:`LeanTaskGroup` (idempotent,
    process-wide); with ``context`` (a worker's), its events are :class:`LeanEvent`."""
    setattr(hypercorn_tcp, "TaskGroup", LeanTaskGroup)  # noqa: B010
    if context is not None:
        context.event_class = LeanEvent
