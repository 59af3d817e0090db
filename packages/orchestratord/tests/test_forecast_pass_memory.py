"""ORCH-2742: the waiting loop's forecast pass over a whole queue holds no per-task
object: each queued task's job and forecast is made, handed on and dropped while the
simulation runs, so the pass's peak does not grow with the queue (issue #20: a list of
every queued task's job, forecast and ``(task, position, forecast)`` tuple, ~300 B per
queued task four times a second, was a peak that RSS per queued task kept)."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace
from typing import Any

from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.eta import Slot, simulate
from llama_orch.core.replica import ReplicaState
from llama_orch.core.servicetime import Prior
from llama_orch.orchestratord._forecast_inputs import job_of
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.orchestratord.workload import Workload

N = 4000


def _pool(n: int) -> tuple[Workload, Any]:
    """A Workload and a pool of one Ready 2-slot replica with ``n`` queued tasks."""
    engine = "llamacpp-http"
    w = Workload()
    w._priors[engine] = Prior(overhead_ms=100.0, prefill_ms_per_token=2.0, decode_ms_per_token=20.0)
    state = ReplicaState(pool_id="p", replica_id="p-e0", engine=engine, status="ready", slots=2)
    queue = []
    for i in range(n):
        tid = f"t{i}"
        req = GenerateRequest(task_id=tid, prompt="p", max_tokens=8 + i % 50, seed=1)
        queue.append(TaskRecord(tid, "p", engine, "interactive", req, 10 + i % 300))
    pool = SimpleNamespace(
        id="p", engine=engine, replicas={"p-e0": SimpleNamespace(state=state)}, queue=queue
    )
    w.model(pool, "p-e0", 2)
    return w, pool


def test_the_forecast_pass_peak_does_not_grow_with_the_queue() -> None:
    w, pool = _pool(N)
    seen = [0]

    def each(rec: TaskRecord, pos: int, slot: Slot) -> None:
        seen[0] += 1

    w.forecasts(pool, 100.0, each)  # warm: the model's caches
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        running = w.forecasts(pool, 100.0, each)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert running == [] and seen[0] == 2 * N
    # the snapshot of the queue (8 B a task) and the lanes; a list of every task's job
    # and forecast was ~300 B a task (1.2 MB here)
    assert peak < 16 * N, f"{peak / N:.0f} B per queued task at the pass's peak"


def test_the_pass_gives_each_queued_task_the_forecast_of_the_whole_simulation() -> None:
    w, pool = _pool(300)
    got: list[tuple[TaskRecord, int, Slot]] = []
    w.forecasts(pool, 100.0, lambda rec, pos, slot: got.append((rec, pos, slot)))
    # simulate() over the whole queue at once (no output share learned here: ORCH-2922's
    # expectations are None, one simulation)
    slots = simulate(w.loads(pool, 100.0), [job_of(t) for t in pool.queue], 100.0)
    assert slots is not None
    assert got == [(t, i, s) for i, (t, s) in enumerate(zip(pool.queue, slots, strict=True))]
    assert [pos for _, pos, _ in got] == list(range(300))
