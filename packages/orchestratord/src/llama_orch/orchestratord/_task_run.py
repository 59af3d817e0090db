"""The part of a task's record that only a dispatched task needs (ORCH-2791).

A queued task's :class:`~llama_orch.orchestratord.tasks.TaskRecord` holds no
:class:`RunState`; the first value set that differs from its default (in practice the
dispatch, ``Dispatcher.launch``) makes one, and it stays for the record's life (a
requeued or preempted task keeps its counts). Reading a field of a record without one
gives the field's default, so callers read and write ``rec.<field>`` as before. Reason:
these 19 slots were ~150 B of every queued task's record, which a queue of thousands of
tasks pays for nothing (issue #20, RSS per queued task). The per-token fields (tokens,
first and last token, busy sums) stay slots of the record: a property per token would
cost the token path CPU (ORCH-2730).
"""

from __future__ import annotations

import asyncio

from llama_orch.core.errors import ErrorCode

__all__ = ["RunFields", "RunState"]


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
        self.predicted_service_ms: float = 0.0  # the service-time model's forecast at dispatch
        self.finish_sent_at: float = 0.0  # when the last ``metrics`` finish was sent (ORCH-2907)
        self.kv_warmth: bool | None = None  # from the first ``metrics`` event, for the end log
        self.runner: asyncio.Task[None] | None = None  # the run's asyncio task
        self.error_code: ErrorCode | None = None  # of the terminal ``error`` event (ORCH-1967)
        self.takeover: bool = False  # continued after its instance stopped (ORCH-2530)


class RunFields:
    """The :class:`RunState` fields as attributes of the record: the default while the
    record has no run part, a run part made by the first set of another value."""

    __slots__ = ()
    _run: RunState | None

    def _run_state(self) -> RunState:
        """The run part, made if there is none (the record's class holds the slot)."""
        raise NotImplementedError

    @property
    def engine_version(self) -> str:
        run = self._run
        return "" if run is None else run.engine_version

    @engine_version.setter
    def engine_version(self, value: str) -> None:
        if self._run is not None or value != "":
            self._run_state().engine_version = value

    @property
    def engine_slot(self) -> int | None:
        run = self._run
        return None if run is None else run.engine_slot

    @engine_slot.setter
    def engine_slot(self, value: int | None) -> None:
        if self._run is not None or value is not None:
            self._run_state().engine_slot = value

    @property
    def engine_slot_source(self) -> int | None:
        run = self._run
        return None if run is None else run.engine_slot_source

    @engine_slot_source.setter
    def engine_slot_source(self, value: int | None) -> None:
        if self._run is not None or value is not None:
            self._run_state().engine_slot_source = value

    @property
    def engine_slot_used(self) -> int | None:
        run = self._run
        return None if run is None else run.engine_slot_used

    @engine_slot_used.setter
    def engine_slot_used(self, value: int | None) -> None:
        if self._run is not None or value is not None:
            self._run_state().engine_slot_used = value

    @property
    def engine_ms_before(self) -> int:
        run = self._run
        return 0 if run is None else run.engine_ms_before

    @engine_ms_before.setter
    def engine_ms_before(self, value: int) -> None:
        if self._run is not None or value != 0:
            self._run_state().engine_ms_before = value

    @property
    def queue_wait_ms(self) -> int:
        run = self._run
        return 0 if run is None else run.queue_wait_ms

    @queue_wait_ms.setter
    def queue_wait_ms(self, value: int) -> None:
        if self._run is not None or value != 0:
            self._run_state().queue_wait_ms = value

    @property
    def first_token_ms(self) -> int | None:
        run = self._run
        return None if run is None else run.first_token_ms

    @first_token_ms.setter
    def first_token_ms(self, value: int | None) -> None:
        if self._run is not None or value is not None:
            self._run_state().first_token_ms = value

    @property
    def preempt_requested(self) -> bool:
        run = self._run
        return False if run is None else run.preempt_requested

    @preempt_requested.setter
    def preempt_requested(self, value: bool) -> None:
        if self._run is not None or value:
            self._run_state().preempt_requested = value

    @property
    def preemptions(self) -> int:
        run = self._run
        return 0 if run is None else run.preemptions

    @preemptions.setter
    def preemptions(self, value: int) -> None:
        if self._run is not None or value != 0:
            self._run_state().preemptions = value

    @property
    def migrations(self) -> int:
        run = self._run
        return 0 if run is None else run.migrations

    @migrations.setter
    def migrations(self, value: int) -> None:
        if self._run is not None or value != 0:
            self._run_state().migrations = value

    @property
    def run_tokens_before(self) -> int:
        run = self._run
        return 0 if run is None else run.run_tokens_before

    @run_tokens_before.setter
    def run_tokens_before(self, value: int) -> None:
        if self._run is not None or value != 0:
            self._run_state().run_tokens_before = value

    @property
    def run_prefill_ahead(self) -> int:
        run = self._run
        return 0 if run is None else run.run_prefill_ahead

    @run_prefill_ahead.setter
    def run_prefill_ahead(self, value: int) -> None:
        if self._run is not None or value != 0:
            self._run_state().run_prefill_ahead = value

    @property
    def run_prefill_ahead_sq(self) -> int:
        run = self._run
        return 0 if run is None else run.run_prefill_ahead_sq

    @run_prefill_ahead_sq.setter
    def run_prefill_ahead_sq(self, value: int) -> None:
        if self._run is not None or value != 0:
            self._run_state().run_prefill_ahead_sq = value

    @property
    def predicted_service_ms(self) -> float:
        run = self._run
        return 0.0 if run is None else run.predicted_service_ms

    @predicted_service_ms.setter
    def predicted_service_ms(self, value: float) -> None:
        if self._run is not None or value != 0.0:
            self._run_state().predicted_service_ms = value

    @property
    def finish_sent_at(self) -> float:
        run = self._run
        return 0.0 if run is None else run.finish_sent_at

    @finish_sent_at.setter
    def finish_sent_at(self, value: float) -> None:
        if self._run is not None or value != 0.0:
            self._run_state().finish_sent_at = value

    @property
    def kv_warmth(self) -> bool | None:
        run = self._run
        return None if run is None else run.kv_warmth

    @kv_warmth.setter
    def kv_warmth(self, value: bool | None) -> None:
        if self._run is not None or value is not None:
            self._run_state().kv_warmth = value

    @property
    def runner(self) -> asyncio.Task[None] | None:
        run = self._run
        return None if run is None else run.runner

    @runner.setter
    def runner(self, value: asyncio.Task[None] | None) -> None:
        if self._run is not None or value is not None:
            self._run_state().runner = value

    @property
    def error_code(self) -> ErrorCode | None:
        run = self._run
        return None if run is None else run.error_code

    @error_code.setter
    def error_code(self, value: ErrorCode | None) -> None:
        if self._run is not None or value is not None:
            self._run_state().error_code = value

    @property
    def takeover(self) -> bool:
        run = self._run
        return False if run is None else run.takeover

    @takeover.setter
    def takeover(self, value: bool) -> None:
        if self._run is not None or value:
            self._run_state().takeover = value
