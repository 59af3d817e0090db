"""The engine connect before the response head of a task's stream (ORCH-2821).

A streaming submit (``POST /v1/tasks`` with ``Accept: text/event-stream``, the
facade's streamed completions) admits its task and answers in one request. The
admission wakes the pool's dispatcher, whose step is queued before the response
writes its head; the head's coalesced write (ORCH-2766, ORCH-2814) was then queued
before the first step of the run that the dispatcher's step creates, so orchestratord
wrote the client's head between the dispatch and the engine connect.
:func:`dispatch_first` yields once before the head so that the dispatcher's step
runs first: the head's write is then queued behind the run's first step (through the
engine connect's start) and lands while the connect completes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tasks import TaskRecord

__all__ = ["dispatch_first"]


async def dispatch_first(rec: TaskRecord) -> None:
    """Before the response head of ``rec``'s stream: while ``rec`` is queued, yield
    once, so that a dispatcher's step already due (the one its admission woke) runs
    and creates the run before the head's write is queued."""
    if rec.state == "queued":
        await asyncio.sleep(0)
