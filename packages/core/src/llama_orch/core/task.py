"""One task's lifecycle: its phases, the allowed transitions and its single end (ORCH-2400).

A task is ``queued`` when admitted, ``running`` once dispatched, may go back
to ``queued`` (its replica was unreachable before it answered, ORCH-1117, or it
was preempted, ORCH-1902), and ends exactly once in one of three terminal
phases. After the end nothing moves it again (ORCH-2402). Pure: no I/O, no
asyncio; the caller passes the time in.

::

    QUEUED ──dispatch──▶ RUNNING ──requeue──▶ QUEUED
      │                    │
      └──────end───────────┴──▶ COMPLETED | FAILED | CANCELED   (once; final)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["TERMINAL", "IllegalTransition", "Lifecycle", "Phase"]


class Phase(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELED})


class IllegalTransition(Exception):
    """A transition the lifecycle does not allow (ORCH-2401): a bug in the caller."""


@dataclass(slots=True)
class Lifecycle:
    """The phase of one task and the count of its transitions."""

    phase: Phase = Phase.QUEUED
    dispatches: int = 0
    requeues: int = 0
    ended_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    def dispatch(self) -> None:
        """QUEUED → RUNNING (ORCH-2401)."""
        if self.phase is not Phase.QUEUED:
            raise IllegalTransition(f"dispatch from {self.phase}")
        self.phase = Phase.RUNNING
        self.dispatches += 1

    def requeue(self) -> None:
        """RUNNING → QUEUED: back in the queue, to be dispatched again (ORCH-2401)."""
        if self.phase is not Phase.RUNNING:
            raise IllegalTransition(f"requeue from {self.phase}")
        self.phase = Phase.QUEUED
        self.requeues += 1

    def end(self, outcome: Phase, now: float) -> bool:
        """Enter the terminal ``outcome``; False (and no change) if the task already ended.

        Ending is allowed from QUEUED and RUNNING; it happens exactly once (ORCH-2402)."""
        if outcome not in TERMINAL:
            raise IllegalTransition(f"{outcome} is not a terminal phase")
        if self.terminal:
            return False
        self.phase = outcome
        self.ended_at = now
        return True
