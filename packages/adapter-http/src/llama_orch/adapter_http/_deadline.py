"""One deadline over a block of a task, entered with a plain ``with`` (ORCH-2964).

The behaviour is ``asyncio.timeout``'s (Python 3.11): when the deadline passes, the
task is cancelled; at the block's exit a ``CancelledError`` that this deadline caused,
and no other cancel request since the block was entered, becomes ``TimeoutError`` (its
``__cause__`` the ``CancelledError``); a block that ends in any other way is left as it
ended. A deadline already due when the block is entered fires at the loop's next turn.
What it saves is the asynchronous context manager's two coroutines, its state enum and
its reschedule path: the stream path enters one per engine request.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Deadline"]


class Deadline:
    """``with Deadline(delay):`` inside a task; each instance is entered once."""

    __slots__ = ("_cancelling", "_delay", "_fired", "_handle", "_task")

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._fired = False

    def __enter__(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("Deadline should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        when = loop.time() + self._delay
        if when <= loop.time():
            self._handle: asyncio.Handle = loop.call_soon(self._fire)
        else:
            self._handle = loop.call_at(when, self._fire)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._handle.cancel()
        if (
            self._fired
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()
