"""The expected output of the work ahead (ORCH-2921, ORCH-2922): issue #19's starts
served in order after a canceled task were told 1.24x their wait (1.07x otherwise),
the canceled task's slot held to its `max_tokens`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.api import EndEvent, ErrorEvent
from llama_orch.core.errors import ErrorCode
from llama_orch.core.eta import Job, Slot
from llama_orch.core.replica import ReplicaState
from llama_orch.core.servicetime import Prior
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.orchestratord.workload import Workload

ENGINE = "llamacpp-http"


class _Queue(list[TaskRecord]):
    capacity = 100

    def position(self, rec: TaskRecord) -> int:
        return self.index(rec) if rec in self else -1


def _pool(w: Workload) -> SimpleNamespace:
    """One replica of one slot: 100 ms + 5 ms a prompt token to the first token, 20 ms
    a token after it."""
    w.seed(ENGINE, overhead_ms=100.0)
    w._priors[ENGINE] = Prior(
        overhead_ms=100.0, prefill_ms_per_token=5.0, decode_ms_per_token=20.0, slowdown=1.0
    )
    state = ReplicaState(pool_id="p", replica_id="p-e0", engine=ENGINE, status="ready", slots=1)
    replica = SimpleNamespace(state=state)
    pool = SimpleNamespace(id="p", engine=ENGINE, replicas={"p-e0": replica}, queue=_Queue())
    w.model(pool, "p-e0", 1)  # type: ignore[arg-type]
    return pool


def _rec(tid: str, max_tokens: int) -> TaskRecord:
    req = GenerateRequest(task_id=tid, prompt="x", max_tokens=max_tokens, seed=1)
    return TaskRecord(tid, "p", ENGINE, "interactive", req, 0)


def _ended(w: Workload, pool: SimpleNamespace, tid: str, tokens: int, how: str, t: float) -> None:
    """A 100-token task that ran ``tokens`` at 20 ms and ended ``how``."""
    r = _rec(tid, 100)
    r.dispatch("p-e0")
    r.dispatched = t
    w.started("p", "p-e0", r)
    r.run_first_token = t + 0.1
    r.last_token = t + 0.1 + (tokens - 1) * 0.02
    r.engine_tokens = tokens
    r.busy_sum, r.run_chunks = tokens, tokens
    if how == "failed":
        r.finish(ErrorEvent(code=ErrorCode.INTERNAL, message="engine fault"))
    else:
        reason = "canceled" if how == "canceled" else "length"
        r.finish(EndEvent(tokens_out=tokens, decode_ms=0, reason=reason))  # type: ignore[arg-type]
    w.ended("p", "p-e0", r)
    w.observe(pool, pool.replicas["p-e0"], r, t + 1.0)  # type: ignore[arg-type]


def _running(w: Workload, tokens: int, t: float) -> TaskRecord:
    """A 400-token task running at the model's 20 ms a token, ``tokens`` so far."""
    r = _rec("a", 400)
    r.dispatched = t - 0.1 - (tokens - 1) * 0.02
    w.started("p", "p-e0", r)
    r.run_first_token = r.dispatched + 0.1
    r.last_token = t
    r.engine_tokens = tokens
    r.busy_sum, r.run_chunks = tokens, tokens
    return r


def test_the_slot_ahead_is_held_for_the_expected_output_the_finish_for_the_budget():
    """40 runs of 100 tokens, every tenth canceled after 20 (a share of 0.2), and 10
    failed after 50 tokens (not learned: an engine fault is not a length). A 400-token
    task has run 11 tokens (share 0.0275): the runs still going then are the 36
    completed (share 1), the 4 canceled (0.2) and the prior's 4 (1), so it is expected
    to hold its slot for 400 x (40 x 0.9725 + 4 x 0.1725) / 44 = 360 tokens more, not
    its 389 (ORCH-2921). A queued 50-token task starts when that slot frees: 360 x 20
    ms, not 389 x 20 (ORCH-2922); its own finish is told at its budget (every completed
    run used its budget): start + 100 ms + 49 x 20 ms. Deadline feasibility keeps the
    budget of the task ahead (ORCH-1958)."""
    w = Workload()
    pool = _pool(w)
    t = 1000.0
    for n in range(40):
        _ended(w, pool, f"r{n}", 20 if n % 10 == 9 else 100, "canceled" if n % 10 == 9 else "ok", t)
        t += 3.0
    for n in range(10):
        _ended(w, pool, f"f{n}", 50, "failed", t)
        t += 0.1
    _running(w, 11, t)
    q = _rec("q", 50)
    pool.queue.append(q)
    expected = round(400 * (40 * (1 - 11 / 400) + 4 * (0.2 - 11 / 400)) / 44)
    assert expected == 360
    slot, _told = w.predicted(pool, q, t)  # type: ignore[arg-type]
    assert slot is not None
    assert slot.start_ms == pytest.approx(expected * 20.0, rel=1e-3)
    assert slot.finish_ms - slot.start_ms == pytest.approx(100.0 + 49 * 20.0, rel=1e-3)
    # the queued events (ORCH-1961, ORCH-2907): the same start, the finish told
    told_each: list[tuple[object, int, Slot]] = []
    running = w.forecasts(pool, t, lambda *a: told_each.append(a))  # type: ignore[arg-type]
    assert running is not None
    ((rec, pos, told),) = told_each
    assert rec is q and pos == 0
    assert told.start_ms == pytest.approx(slot.start_ms) and told.finish_ms == pytest.approx(
        slot.finish_ms
    )
    # the running task's own finish is told at its budget (389 tokens)
    assert running[0][1] == pytest.approx(389 * 20.0, rel=1e-3)
    # deadline feasibility: the budgets of the tasks ahead (ORCH-1958 unchanged): the
    # running one's 389 tokens, then the queued one's first token and 49 tokens
    feas = w.forecast(pool, Job(0, 50), "interactive", t)  # type: ignore[arg-type]
    assert feas is not None
    assert feas.start_ms == pytest.approx(389 * 20.0 + 100.0 + 49 * 20.0, rel=1e-3)


def test_without_cancels_the_forecasts_keep_the_budget():
    """Only completed runs at their budget (`bench/calibration.py`'s ended tasks that
    were not canceled): every forecast is ORCH-1997's, the start too."""
    w = Workload()
    pool = _pool(w)
    t = 1000.0
    for n in range(20):
        _ended(w, pool, f"r{n}", 100, "ok", t)
        t += 3.0
    _running(w, 11, t)
    q = _rec("q", 50)
    pool.queue.append(q)
    slot, _told = w.predicted(pool, q, t)  # type: ignore[arg-type]
    assert slot is not None and slot.start_ms == pytest.approx(389 * 20.0, rel=1e-3)
