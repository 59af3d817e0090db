"""A kept-alive connection's idle timeout as one timer, not a task per request (ORCH-2782).

hypercorn 0.18 restarts a connection's ``idle_task`` each time the connection goes
idle (after every answer) and stops it when a request arrives: each restart creates
an asyncio task that runs ``asyncio.wait_for(context.terminated.wait(),
keep_alive_timeout)``, which creates a second task, and each stop cancels and awaits
them, behind an ``asyncio.Lock``. On a kept-alive connection that is two tasks
created and cancelled per request (1.5 to 1.7 % of orchestratord's CPU inclusive in
session 10's profiles). :class:`IdleTimer` has the same two coroutine methods and does
the same thing with ``loop.call_later``: the connection closes (hypercorn's own
server-side close, ``close_idle``) when it stays idle for
``keep_alive_timeout`` or when the server shuts down while it is idle (one watcher
per worker for all idle connections, instead of one wait per connection).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

__all__ = ["IdleConnection", "IdleTimer"]


class IdleConnection(Protocol):
    """What the timer needs of hypercorn's connection (``writes.CoalescingTCPServer``)."""

    loop: asyncio.AbstractEventLoop
    config: Any
    context: Any

    async def close_idle(self) -> None: ...


class _Idle:
    """The idle connections of one hypercorn worker and the task that closes them
    when the worker shuts down (``context.terminated``)."""

    __slots__ = ("timers", "watcher")

    def __init__(self, context: Any) -> None:
        self.timers: set[IdleTimer] = set()
        self.watcher = asyncio.get_running_loop().create_task(self._watch(context))

    async def _watch(self, context: Any) -> None:
        await context.terminated.wait()
        for timer in list(self.timers):
            timer.expire()


_WORKERS: dict[int, _Idle] = {}  # id(context) -> its idle connections


class IdleTimer:
    """``TCPServer.idle_task`` for one connection (the interface of hypercorn's
    ``AsyncioSingleTask``: ``restart(task_group, action)`` and ``stop()``)."""

    __slots__ = ("_closing", "_idle", "_server", "_timer")

    def __init__(self, server: IdleConnection) -> None:
        self._server = server
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        context = server.context
        idle = _WORKERS.get(id(context))
        if idle is None or idle.watcher.done():
            idle = _WORKERS[id(context)] = _Idle(context)
            idle.watcher.add_done_callback(lambda _t: _WORKERS.pop(id(context), None))
        self._idle = idle

    async def restart(self, task_group: Any, action: Any) -> None:
        # ``action`` is hypercorn's ``_idle_timeout``; what it does is done here
        self._cancel()
        server = self._server
        if server.context.terminated.is_set():
            self.expire()
            return
        self._timer = server.loop.call_later(server.config.keep_alive_timeout, self.expire)
        self._idle.timers.add(self)

    async def stop(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._idle.timers.discard(self)

    def expire(self) -> None:
        """Close the idle connection (what ``_idle_timeout`` does once its wait ends)."""
        self._cancel()
        if self._closing is None:  # once; the task is kept until it ends
            self._closing = self._server.loop.create_task(self._server.close_idle())
