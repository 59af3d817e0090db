"""The response head of a task's stream after its engine request (ORCH-2820).

A streaming submit (``POST /v1/tasks`` with ``Accept: text/event-stream``, the
facade's streamed completions) admits its task and answers in one request. The
admission wakes the pool's dispatcher, whose turn is queued before the response
writes its head; the head's coalesced write (ORCH-2814) was then queued before the
run's first step, so orchestratord wrote the client's head between the dispatch
and the engine connect, on the path to the first token. :func:`engine_request_first`
lets the dispatcher's turn run first and, when it launched the task's run, holds the
head until the run's engine request was written (the adapter's
:func:`~llama_orch.core.adapter_api.request_sent`), the run ended, or
:data:`HEAD_HOLD_S` passed: the head's write then lands while the engine reads the
request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tasks import TaskRecord

__all__ = ["HEAD_HOLD_S", "engine_request_first"]

# the longest a response head waits for its task's engine request: a connect that
# takes longer (an engine that does not accept) must not keep the client in the dark
HEAD_HOLD_S = 0.02


async def engine_request_first(rec: TaskRecord) -> None:
    """Return once the response head of ``rec``'s stream may go out: at once unless
    the dispatcher's step that this request's admission woke launches ``rec``'s run
    (its engine request not yet written)."""
    if rec.state == "queued":
        await asyncio.sleep(0)  # the dispatcher's step, queued by the admission
    opening = rec.opening
    if opening is None or opening.done():
        return
    timer = asyncio.get_running_loop().call_later(HEAD_HOLD_S, _settle, opening)
    try:
        await asyncio.shield(opening)  # a reader that goes away leaves it to the others
    finally:
        timer.cancel()


def _settle(opening: asyncio.Future[None]) -> None:
    if not opening.done():
        opening.set_result(None)
