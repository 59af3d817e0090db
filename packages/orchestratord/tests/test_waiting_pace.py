"""A running task's live pace against the busy slots it decoded beside (ORCH-2918):
issue #19's two-client phases, where a new task was forecast at 1.15-1.89x."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.eta import Job
from llama_orch.core.replica import ReplicaState
from llama_orch.core.servicetime import Prior
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.orchestratord.workload import Workload

ENGINE = "llamacpp-http"


def _replica(w: Workload) -> SimpleNamespace:
    # 20 ms a token alone, 40 ms beside one other decoding task (slowdown 1 a slot)
    w._priors[ENGINE] = Prior(
        overhead_ms=100.0, prefill_ms_per_token=5.0, decode_ms_per_token=20.0, slowdown=1.0
    )
    state = ReplicaState(pool_id="p", replica_id="p-e0", engine=ENGINE, status="ready", slots=4)
    pool = SimpleNamespace(
        id="p", engine=ENGINE, replicas={"p-e0": SimpleNamespace(state=state)}, queue=[]
    )
    w.model(pool, "p-e0", 4)  # type: ignore[arg-type]
    return pool


def _decoded(w: Workload, tid: str, tokens: int, ms_per_token: float, busy: int) -> TaskRecord:
    """A task of 400 tokens that has decoded ``tokens`` at ``ms_per_token`` beside
    ``busy - 1`` others (its chunks' busy slots), its prompt of 0 tokens."""
    req = GenerateRequest(task_id=tid, prompt="x", max_tokens=400, seed=1)
    r = TaskRecord(tid, "p", ENGINE, "interactive", req, 0)
    r.dispatched = 100.0
    w.started("p", "p-e0", r)
    r.run_first_token = 100.1
    r.last_token = 100.1 + (tokens - 1) * ms_per_token / 1000
    r.engine_tokens = tokens
    r.busy_sum, r.run_chunks = busy * tokens, tokens
    return r


def test_a_task_that_decoded_beside_another_is_not_slow_once_alone():
    """ORCH-2918: a task decoded 101 tokens at 40 ms, the model's pace beside one
    other task, which has just ended. Measured against the model at the busy slots
    now (1: 20 ms) its ratio was 2: its 299 tokens left were forecast at 2 x 20 ms
    (weight 0.97), and the replica's pace of 1.5 stretched a new task's decode too
    (seed 19's run 2026-12-04-1011: a neighbour's ratio 2.73 and a new task forecast
    at 1.89x). Against the model at the busy slots it decoded beside (their mean over
    its chunks) its ratio is 1: 299 x 20 ms left alone, a new task at the model's pace."""
    w = Workload()
    pool = _replica(w)
    _decoded(w, "a", 101, 40.0, busy=2)
    now = 100.1 + 100 * 0.040 + 0.01
    (load,) = w.loads(pool, now)  # type: ignore[arg-type]
    assert load.pace == pytest.approx(1.0)
    assert load.running_ms == pytest.approx([299 * 20.0])
    slot = w.forecast(pool, Job(100, 101), None, now)  # type: ignore[arg-type]
    assert slot is not None and slot.start_ms == 0.0
    # its prompt (100 + 500 ms) and 100 tokens at 40 ms beside the running one
    assert slot.finish_ms == pytest.approx(100.0 + 500.0 + 100 * 40.0)


def test_a_task_slower_than_the_model_at_its_busy_slots_still_slows_the_replica():
    """ORCH-1977 unchanged where the busy slots did not change: a task at 60 ms a token
    beside one other (1.5x the model's 40 ms), still beside it, is forecast at its
    blended ratio and stretches a new task's decode by the replica's pace."""
    w = Workload()
    pool = _replica(w)
    _decoded(w, "a", 101, 60.0, busy=2)
    _decoded(w, "b", 101, 40.0, busy=2)
    now = 100.1 + 100 * 0.060 + 0.01
    (load,) = w.loads(pool, now)  # type: ignore[arg-type]
    weight = 100 / 103
    a_ratio = 60.0 / 40.0
    b_ratio = (now - 100.1) * 1000 / 101 / 40.0  # a stall counts: first token -> now
    assert load.pace == pytest.approx(
        (1.0 + weight * (a_ratio + b_ratio)) / (1.0 + 2 * weight), rel=1e-6
    )
    assert sorted(load.running_ms) == pytest.approx(
        sorted(299 * 40.0 * (weight * r + 1 - weight) for r in (a_ratio, b_ratio)), rel=1e-6
    )
