"""Stopping the daemons a test serves in its own event loop (ORCH-6241).

Every fixture that runs ``serve()`` as a task stops all of them, together, even
when one hangs: a daemon that does not stop within the bound is cancelled after
the loop's tasks are written into the error (where each one waits, coroutine by
coroutine), so a hang names its cause and leaks nothing into later tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any


def _chain(coro: Any) -> Iterator[str]:
    """``file:line name`` of each coroutine, from the task's own down to where it waits."""
    seen = 0
    while coro is not None and seen < 64:
        seen += 1
        frame = (
            getattr(coro, "cr_frame", None)
            or getattr(coro, "ag_frame", None)
            or getattr(coro, "gi_frame", None)
        )
        if frame is not None:
            yield f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}"
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "ag_await", None)
            or getattr(coro, "gi_yieldfrom", None)
        )


def task_stacks() -> str:
    """Every pending task of the running loop and where it waits."""
    out = []
    for task in asyncio.all_tasks():
        if task.done():
            continue
        where = "\n".join(f"    {line}" for line in _chain(task.get_coro()))
        out.append(f"  task {task.get_name()}:\n{where}")
    return "\n".join(sorted(out))


async def stop_served(
    served: Sequence[tuple[asyncio.Event, asyncio.Task[None]]], timeout: float
) -> None:
    """Set every stop event, wait for all serve tasks at once; raise the first
    daemon's own error, or a TimeoutError naming where the others wait."""
    for stop, _ in served:
        stop.set()
    tasks = [task for _, task in served]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    if pending:
        stacks = task_stacks()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise TimeoutError(
            f"{len(pending)} of {len(tasks)} daemons did not stop within {timeout} s; "
            f"the loop's tasks when it expired:\n{stacks}"
        )
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
