"""The task lifecycle (ORCH-2400..2402), proven by a Hypothesis state machine."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from llama_orch.core.task import TERMINAL, IllegalTransition, Lifecycle, Phase

# the transitions the spec allows (ORCH-2401): (from, operation) -> to
ALLOWED = {
    (Phase.QUEUED, "dispatch"): Phase.RUNNING,
    (Phase.RUNNING, "requeue"): Phase.QUEUED,
}


class LifecycleMachine(RuleBasedStateMachine):
    """Any sequence of dispatch / requeue / end calls: the phase follows the table,
    a refused transition changes nothing, and there is exactly one end (ORCH-2402)."""

    def __init__(self) -> None:
        super().__init__()
        self.life = Lifecycle()
        self.model = Phase.QUEUED
        self.ends = 0
        self.clock = 0.0
        self.history: list[Phase] = [Phase.QUEUED]

    def _move(self, op: str) -> None:
        before = self.life.phase
        expected = ALLOWED.get((self.model, op))
        if expected is None:
            with pytest.raises(IllegalTransition):
                getattr(self.life, op)()
            assert self.life.phase == before  # a refused transition changes nothing
        else:
            getattr(self.life, op)()
            self.model = expected
            self.history.append(expected)

    @rule()
    def dispatch(self) -> None:
        self._move("dispatch")

    @rule()
    def requeue(self) -> None:
        self._move("requeue")

    @rule(outcome=st.sampled_from(sorted(TERMINAL)))
    def end(self, outcome: Phase) -> None:
        self.clock += 1.0
        was_terminal = self.model in TERMINAL
        ended = self.life.end(outcome, self.clock)
        assert ended is not was_terminal  # the first end wins, later ones are refused
        if ended:
            self.ends += 1
            self.model = outcome
            self.history.append(outcome)

    @rule(phase=st.sampled_from([Phase.QUEUED, Phase.RUNNING]))
    def end_with_a_live_phase(self, phase: Phase) -> None:
        before = self.life.phase
        with pytest.raises(IllegalTransition):
            self.life.end(phase, self.clock)
        assert self.life.phase == before

    @invariant()
    def phase_matches_the_table(self) -> None:
        assert self.life.phase == self.model
        assert self.life.terminal is (self.model in TERMINAL)

    @invariant()
    def at_most_one_end_and_nothing_after_it(self) -> None:
        assert self.ends <= 1
        terminal_at = [i for i, p in enumerate(self.history) if p in TERMINAL]
        assert len(terminal_at) == self.ends
        if terminal_at:
            assert terminal_at[0] == len(self.history) - 1  # the end is the last phase
            assert self.life.ended_at is not None

    @invariant()
    def counts_follow_the_transitions(self) -> None:
        assert self.life.dispatches == self.history.count(Phase.RUNNING)
        pairs = zip(self.history, self.history[1:], strict=False)
        back = sum(1 for a, b in pairs if (a, b) == (Phase.RUNNING, Phase.QUEUED))
        assert self.life.requeues == back


TestLifecycle = LifecycleMachine.TestCase


def test_a_queued_task_can_end_without_running() -> None:
    life = Lifecycle()
    assert life.end(Phase.CANCELED, 5.0)
    assert life.phase is Phase.CANCELED and life.ended_at == 5.0 and life.dispatches == 0
    with pytest.raises(IllegalTransition):
        life.dispatch()
