"""The part of a task's record that only a dispatched task needs (ORCH-2791).

A queued task's :class:`~llama_orch.orchestratord.tasks.TaskRecord` holds no
:class:`RunState`; the first value set that differs from its default (in practice the
dispatch, ``Dispatcher.launch``) makes one, and it stays for the record's life (a
requeued or preempted task keeps its counts). Reading a field of a record without one
gives the field's default, so callers read and write ``rec.<field>`` as before. Reason:
these slots (19 then) were ~150 B of every queued task's record, which a queue of thousands of
tasks pays for nothing (issue #20, RSS per queued task). The per-token fields (tokens,
first and last token, busy sums) stay slots of the record: a property per token would
cost the token path CPU (ORCH-2730).
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar, overload

from llama_orch.core.errors import ErrorCode

__all__ = ["RunFields", "RunState"]

_T = TypeVar("_T")


class RunState:
    """One run's and its preemptions' state, made at dispatch."""

    __slots__ = (
        "engine_ms_before",
        "engine_slot",
        "engine_slot_source",
        "engine_slot_used",
        "engine_version",
        "error_code",
        "finish_sent_at",
        "first_token_ms",
        "kv_warmth",
        "migrations",
        "predicted_service_ms",
        "preempt_requested",
        "preemptions",
        "queue_wait_ms",
        "run_prefill_ahead",
        "run_prefill_ahead_sq",
        "run_prompt_tokens",
        "run_tokens_before",
        "runner",
        "takeover",
    )

    def __init__(self) -> None:
        self.engine_version: str = ""  # the engine's version at dispatch
        # ORCH-2356: the slot the slot rules (ORCH-2371) pinned this run to
        self.engine_slot: int | None = None
        self.engine_slot_source: int | None = None  # ORCH-2369: copy this slot into engine_slot
        # ORCH-2351: the slot the engine reported it ran in
        self.engine_slot_used: int | None = None
        self.engine_ms_before: int = 0  # engine time of earlier runs (ORCH-1902, ORCH-1903)
        self.queue_wait_ms: int = 0  # admission to first dispatch
        self.first_token_ms: int | None = None  # dispatch to first token of the first run
        self.preempt_requested: bool = False  # a hard preemption asked for (ORCH-1902)
        self.preemptions: int = 0  # hard preemptions so far
        self.migrations: int = 0  # moves to another replica after a mid-stream reset (ORCH-2330)
        self.run_tokens_before: int = 0  # engine tokens before the current run (ORCH-1952)
        # others' prompt tokens still to prefill at dispatch (ORCH-1990)
        self.run_prefill_ahead: int = 0
        self.run_prefill_ahead_sq: int = 0  # the sum of those prompts' squared sizes (ORCH-2900)
        self.run_prompt_tokens: int = 0  # its prompt tokens as its dispatch logged them (ORCH-2926)
        self.predicted_service_ms: float = 0.0  # the service-time model's forecast at dispatch
        self.finish_sent_at: float = 0.0  # when the last ``metrics`` finish was sent (ORCH-2907)
        self.kv_warmth: bool | None = None  # from the first ``metrics`` event, for the end log
        self.runner: asyncio.Task[None] | None = None  # the run's asyncio task
        self.error_code: ErrorCode | None = None  # of the terminal ``error`` event (ORCH-1967)
        self.takeover: bool = False  # continued after its instance stopped (ORCH-2530)


class _RunField(Generic[_T]):
    """One :class:`RunState` field as an attribute of the record: its default while
    the record has no run part; setting another value makes the run part."""

    __slots__ = ("default", "name")

    def __init__(self, default: _T) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, rec: None, owner: type) -> _RunField[_T]: ...
    @overload
    def __get__(self, rec: RunFields, owner: type | None = None) -> _T: ...
    def __get__(self, rec: RunFields | None, owner: type | None = None) -> Any:
        if rec is None:
            return self
        run = rec.run_part()
        return self.default if run is None else getattr(run, self.name)

    def __set__(self, rec: RunFields, value: _T) -> None:
        run = rec.run_part(make=value != self.default)
        if run is not None:
            setattr(run, self.name, value)


class RunFields:
    """The :class:`RunState` fields as attributes of the record: the default while the
    record has no run part, a run part made by the first set of another value."""

    __slots__ = ()
    _run: RunState | None

    def run_part(self, make: bool = False) -> RunState | None:
        """The run part (made if there is none and ``make``); the record's class holds
        the slot."""
        raise NotImplementedError

    engine_version = _RunField[str]("")
    engine_slot = _RunField[int | None](None)
    engine_slot_source = _RunField[int | None](None)
    engine_slot_used = _RunField[int | None](None)
    engine_ms_before = _RunField[int](0)
    queue_wait_ms = _RunField[int](0)
    first_token_ms = _RunField[int | None](None)
    preempt_requested = _RunField[bool](False)
    preemptions = _RunField[int](0)
    migrations = _RunField[int](0)
    run_tokens_before = _RunField[int](0)
    run_prefill_ahead = _RunField[int](0)
    run_prefill_ahead_sq = _RunField[int](0)
    run_prompt_tokens = _RunField[int](0)
    predicted_service_ms = _RunField[float](0.0)
    finish_sent_at = _RunField[float](0.0)
    kv_warmth = _RunField[bool | None](None)
    runner = _RunField[asyncio.Task[None] | None](None)
    error_code = _RunField[ErrorCode | None](None)
    takeover = _RunField[bool](False)
