"""An admission forecast without the simulation where it cannot wait (ORCH-2944).

``Workload.predicted`` simulates the jobs ahead of an admitted task and the task
itself over every Ready replica's running work (``Workload.loads``, ``simulate``).
On a pool with one Ready replica, no dispatch guard, and at least as many idle slots
as jobs, every job starts at once on an idle slot: its forecast needs only the
replica's prefill in progress (ORCH-1996), the number of its slots that hold work,
and the replica's pace; not each running task's ms left, nor the lanes' sorted
slots. :func:`quick_slot` computes that forecast with the simulation's operations
in its order, so the floats are the same to the last bit (ORCH-2940), and returns
None wherever that shortcut does not hold.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from llama_orch.core.eta import Job, Slot, prefill_left, replica_pace
from llama_orch.core.servicetime import ServiceModel

from ._forecast_inputs import tokens_in
from .tasks import TaskRecord

__all__ = ["quick_slot"]


def quick_slot(
    model: ServiceModel,
    slots: int,
    running: Collection[TaskRecord],
    jobs: Sequence[Job],
    now: float,
) -> Slot | None:
    """The forecast of the last of ``jobs`` (in serving order, all queued now) on the one
    Ready replica whose model is ``model``, of ``slots`` slots, running ``running``, as
    ``simulate`` over ``Workload.loads`` gives it (no guard); None when it may differ:
    fewer idle slots than jobs, a running task whose ms left may be 0 or whose pace
    enters the replica's (two tokens decoded), or no prefill in progress beside work."""
    n = max(1, slots)
    busy = len(running)
    if not jobs or busy + len(jobs) > n:  # the lane's idle slots: n - busy
        return None
    p = model.params(now)
    # ORCH-2953: one walk of the running tasks: the conditions below and the prefill in
    # progress (``prefill_terms``' ``pending``, its operations in its order, without its
    # per-task map and list); ``ModelParams.prefill_ms`` inline with its terms read once
    pending = 0.0
    if running:
        log = model.prompt_index()
        overhead, per_token, quad = p.overhead_ms, p.prefill_ms_per_token, p.prefill_quad
        paced, cap = p.prefill_pace, p.prefill_cap
        for t in running:
            if t.run_first_token is None:
                sent = t.dispatched
                if sent is None:  # its ms left may be 0
                    return None
                own = tokens_in(t)
                later, sq = log.between_squares(sent, now)  # ORCH-2941
                squares = own * own + t.run_prefill_ahead_sq + sq  # ORCH-2900
                size = own + t.run_prefill_ahead + later
                size = size if size > 0 else 0  # ``prefill_ms``: max(0, tokens), max(0, squares)
                line = paced * (per_token * size + quad * (squares if squares > 0 else 0))
                capped = cap * size
                ttft = overhead + (capped if capped < line else line)  # min(line, capped)
                left_ms = prefill_left(ttft, (now - sent) * 1000)
                if left_ms > pending:  # max(pending, left_ms)
                    pending = left_ms
            elif t.last_token is None or t.engine_tokens - t.run_tokens_before >= 2:
                return None  # ms left may be 0 / a live pace (ORCH-1977)
        # every running task's ms left is at least ``pending`` plus a term >= 0, so > 0:
        # all of them hold a slot, whatever their tokens left
        terms = (p.decode_ms_per_token, p.decode_ctx, p.decode_cap, p.slowdown)
        if not all(math.isfinite(x) and x >= 0.0 for x in terms):
            return None
        if not pending > 0.0:
            return None
    pace = replica_pace(())  # no running task has a pace of its own
    until = max(0.0, max(0.0, pending))  # ``ReplicaLoad.prefill_ms``, ``_Lane.prefill_until``
    slot = None
    for job in jobs:  # ``_Sim.step``: an idle slot, start 0.0 (``_Lane.service``, ``take``)
        begin = max(0.0, until)
        end = begin + model.service_ms(job.tokens_in, job.tokens_out, 1 + busy, now, pace=pace)
        slot = Slot(0.0, end, 0)
        until = begin + p.prefill_ms(job.tokens_in)
        if end > 0.0:
            busy += 1  # else its slot is idle again
    return slot
