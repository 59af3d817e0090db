"""Live token output and the end-of-task summary shared by ``submit`` and ``demo``.

Tokens go to stdout as they arrive (flushed one by one, so a pipe or a
terminal sees them live); everything else goes to stderr, so
``llorch submit ... > out.txt`` captures only the model's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TextIO

from llama_orch.core.api import (
    EndEvent,
    ErrorEvent,
    QueuedEvent,
    StartedEvent,
    StreamEvent,
    TokenEvent,
)
from rich.console import Console
from rich.markup import escape

from .client import OrchClient
from .errors import ApiError, ClientError

__all__ = [
    "StreamOutcome",
    "consume_stream",
    "follow_task",
    "print_api_error",
    "print_queued",
    "print_summary",
    "stderr_console",
]

CANCEL_TIMEOUT_S = 5.0


def stderr_console() -> Console:
    # soft_wrap: never break a long line (task ids, URLs) at the terminal width.
    return Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class StreamOutcome:
    """What the client saw of one task's stream, with client-side timings."""

    task_id: str
    submitted_at: float
    started: StartedEvent | None = None
    end: EndEvent | None = None
    error: ErrorEvent | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens_seen: int = 0
    parts: list[str] = field(default_factory=list)
    queued: list[QueuedEvent] = field(default_factory=list)  # live position (ORCH-1963)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token, measured by the client from just before submit."""
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.submitted_at) * 1000

    @property
    def tokens_per_s(self) -> float | None:
        end = self.end
        if end is not None and end.decode_ms > 0:
            return end.tokens_out * 1000 / end.decode_ms
        if self.first_token_at is None or self.finished_at is None or self.tokens_seen < 2:
            return None
        elapsed = self.finished_at - self.first_token_at
        return (self.tokens_seen - 1) / elapsed if elapsed > 0 else None

    @property
    def queue_wait_ms(self) -> int | None:
        if self.end is not None and self.end.queue_wait_ms:
            return self.end.queue_wait_ms
        return self.started.queue_wait_ms if self.started is not None else None


async def consume_stream(
    events: AsyncIterator[tuple[int, StreamEvent]],
    outcome: StreamOutcome,
    *,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_queued: Callable[[QueuedEvent], None] | None = None,
) -> StreamOutcome:
    """Write each token to ``out`` as it arrives and record the terminal event;
    ``on_queued`` sees each ``queued`` event while the task waits (ORCH-1963)."""
    out = out if out is not None else sys.stdout
    async for _, event in events:
        if isinstance(event, QueuedEvent):
            outcome.queued.append(event)
            if on_queued is not None:
                on_queued(event)
            continue
        if isinstance(event, TokenEvent):
            if outcome.first_token_at is None:
                outcome.first_token_at = clock()
            outcome.tokens_seen += 1
            outcome.parts.append(event.t)
            out.write(event.t)
            out.flush()
        elif isinstance(event, StartedEvent):
            outcome.started = event
        elif isinstance(event, EndEvent):
            outcome.end = event
        elif isinstance(event, ErrorEvent):
            outcome.error = event
    outcome.finished_at = clock()
    if outcome.parts and not outcome.text.endswith("\n"):
        out.write("\n")
        out.flush()
    return outcome


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def print_summary(
    console: Console, outcome: StreamOutcome, extra: list[tuple[str, str]] | None = None
) -> None:
    rate = outcome.tokens_per_s
    rows: list[tuple[str, str]] = [
        ("task", outcome.task_id),
        ("queue wait", _ms(outcome.queue_wait_ms)),
        ("first token", f"{_ms(outcome.ttft_ms)} (client-measured from submit)"),
        ("tokens out", str(outcome.end.tokens_out if outcome.end else outcome.tokens_seen)),
        ("tokens/s", "n/a" if rate is None else f"{rate:.1f}"),
    ]
    if outcome.end is not None:
        rows.append(("end reason", outcome.end.reason))
    if outcome.error is not None:
        rows.append(("error", f"{outcome.error.code}: {outcome.error.message}"))
    rows.extend(extra or [])
    console.print("[bold]── summary ──[/bold]")
    for key, value in rows:
        console.print(f"  [cyan]{key:<14}[/cyan] {escape(value)}")


def print_queued(console: Console, event: QueuedEvent) -> None:
    """The live place of a waiting task, on stderr (ORCH-1963)."""
    ends = event.predicted_finish_ms  # ORCH-2907
    console.print(
        f"[yellow]queued[/yellow] position {event.queue_position},"
        f" starts in ~{event.predicted_start_ms / 1000:.1f} s"
        + (f", ends in ~{ends / 1000:.1f} s" if ends is not None else "")
    )


def print_api_error(console: Console, exc: ApiError) -> None:
    console.print(f"[bold red]error[/bold red] {escape(exc.code)}: {escape(exc.message)}")
    if exc.status == 429:
        wait = exc.retry_after_s
        if wait is None and exc.body is not None and exc.body.retry_after_ms is not None:
            wait = exc.body.retry_after_ms / 1000
        hint = f"Retry-After: {wait:g} s" if wait is not None else "Retry-After: not given"
        if exc.backoff_ms is not None:
            hint += f" (X-Backoff-Ms: {exc.backoff_ms})"
        if exc.body is not None and exc.body.policy_label:
            hint += f", policy {exc.body.policy_label}"
        console.print(f"  the orchestrator is busy; {escape(hint)}")
    if exc.correlation_id:
        console.print(f"  correlation id: {escape(exc.correlation_id)}")


async def follow_task(
    orch: OrchClient,
    task_id: str,
    submitted_at: float,
    *,
    out: TextIO | None = None,
    events: AsyncGenerator[tuple[int, StreamEvent], None] | None = None,
) -> StreamOutcome:
    """Stream a task to ``out`` (resuming on drops) and return what was seen.

    ``events``: the task's events already opened (``OrchClient.submit_stream``);
    without it the stream route is opened here.

    Ctrl-C makes ``asyncio.run`` cancel the running task; before the
    cancellation propagates we ask the server to cancel the task too, since a
    client that merely disconnects does not cancel it (ORCH-5002).
    """
    outcome = StreamOutcome(task_id, submitted_at)
    console = stderr_console()
    try:
        source = events if events is not None else orch.stream(task_id, resume=True)
        async with contextlib.aclosing(source) as stream:
            await consume_stream(
                stream, outcome, out=out, on_queued=lambda q: print_queued(console, q)
            )
    except asyncio.CancelledError:
        stderr_console().print(f"\n[yellow]interrupted[/yellow]: canceling task {task_id}")
        with contextlib.suppress(ClientError, TimeoutError):
            async with asyncio.timeout(CANCEL_TIMEOUT_S):  # ORCH-2817
                await orch.cancel(task_id)
        raise
    return outcome
