"""What a task's event log holds at a state store (ORCH-2508): the events, the
terminals the store itself writes (displaced, orphaned, canceled), the ``queued``
event and its due rule (ORCH-2561), and the continuation a requeued or claimed task
resumes from (ORCH-2530, ORCH-2580). Re-exported by :mod:`.state_store`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from .api import EndEvent, ErrorEvent, QueuedEvent, TokenEvent
from .errors import ErrorCode

__all__ = [
    "TERMINAL_KINDS",
    "Continuation",
    "Event",
    "LoggedEvent",
    "canceled_terminal",
    "continuation",
    "displaced_terminal",
    "orphaned_terminal",
    "queued_event",
    "queued_note_due",
]

TERMINAL_KINDS = frozenset({"end", "error"})


class Event(msgspec.Struct, frozen=True, array_like=True):
    kind: str  # started | token | metrics | end | error
    data: bytes


class LoggedEvent(msgspec.Struct, frozen=True, array_like=True):
    seq: int  # the SSE ``id:`` (ORCH-1201)
    kind: str
    data: bytes


def displaced_terminal(code: ErrorCode) -> Event:
    """The terminal a full policy appends to the task it displaces (ORCH-2506)."""
    return Event(
        "error",
        msgspec.json.encode(
            ErrorEvent(code=code, message="displaced by the pool's full policy", retriable=True)
        ),
    )


def orphaned_terminal() -> Event:
    return Event(
        "error",
        msgspec.json.encode(
            ErrorEvent(
                code=ErrorCode.POOL_UNAVAILABLE,
                message="no Ready replica is left in the task's replica set",
                retriable=True,
            )
        ),
    )


def canceled_terminal(tokens_out: int = 0) -> Event:
    return Event(
        "end", msgspec.json.encode(EndEvent(tokens_out=tokens_out, decode_ms=0, reason="canceled"))
    )


def queued_event(position: int, eta_ms: int) -> Event:
    """The ``queued`` event a store appends for a waiting task (ORCH-2561)."""
    return Event(
        "queued",
        msgspec.json.encode(QueuedEvent(queue_position=position, predicted_start_ms=eta_ms)),
    )


def queued_note_due(
    last: tuple[int, int, float] | None, position: int, eta_ms: int, now_s: float, interval_ms: int
) -> bool:
    """Whether a new ``queued`` event is due (ORCH-1961, ORCH-2561): none yet, or the last
    one (position, ETA, store time in s) is at least 0.95 interval old and the position
    changed or the ETA moved by more than 10 % or 500 ms. Both backends apply this rule
    on the store's clock, so several instances announcing one task write one event."""
    if last is None:
        return True
    pos, eta, at = last
    if (now_s - at) * 1000 < interval_ms * 0.95:
        return False
    return pos != position or abs(eta - eta_ms) > max(500, 0.1 * eta)


_token_decoder = msgspec.json.Decoder(TokenEvent)


class Continuation(NamedTuple):
    text: str  # the text streamed so far
    next_index: int  # the next token index
    started: bool  # a `started` event is already in the log (never send a second one)
    ended: bool = False  # the log already holds a terminal: nothing to continue


def continuation(events: Sequence[LoggedEvent]) -> Continuation:
    """What a claimed task streamed so far (ORCH-2511).

    With the task's ``request`` (in :class:`Reaped`), this is what a continuation
    needs: original prompt + text so far, token indices going on from here."""
    text: list[str] = []
    nxt = 0
    started = False
    for ev in events:
        if ev.kind == "token":
            tok = _token_decoder.decode(ev.data)
            text.append(tok.t)
            nxt = tok.i + 1
        elif ev.kind == "started":
            started = True
        elif ev.kind in TERMINAL_KINDS:
            return Continuation("".join(text), nxt, started, ended=True)
    return Continuation("".join(text), nxt, started)


# ------------------------------------------------------------------ protocol
