"""What a forecast takes of a task (ORCH-1957): its prompt tokens and its tokens
left, by its budget or by its pool's learned output shares (ORCH-1997,
ORCH-2921, ORCH-2922); a model's terms for the DEBUG ``forecast`` line; the
prompts of a replica's running tasks as indexes (ORCH-2911, ORCH-2941)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from llama_orch.core.eta import Job, Pace, live_pace, prefill_left
from llama_orch.core.output_share import OutputShare
from llama_orch.core.servicetime import ModelParams, ServiceModel
from llama_orch.core.time_index import PromptIndex, Spans

from .tasks import TaskRecord

__all__ = [
    "Expect",
    "budget",
    "decoded_pace",
    "expected_left",
    "guard_limits",
    "job_of",
    "jobs_of",
    "keep_answered",
    "model_terms",
    "prefill_terms",
    "prompt_indexes",
    "tokens_in",
    "tokens_left",
]

# A forecast's output rule (ORCH-2922): the budget (None), or a pool's learned shares
# with ``completed`` False (the slot a task holds, cancels counted) or True (its finish)
Expect = tuple[OutputShare, float, bool] | None


def budget(rec: TaskRecord) -> int:
    """Its token budget: ``max_tokens``, or ``expected_tokens`` if smaller (ORCH-1997)."""
    out = rec.request.max_tokens
    if rec.expected_tokens is not None:
        out = min(out, rec.expected_tokens)
    return out


def tokens_left(rec: TaskRecord) -> int:
    """Tokens a task is still expected to generate (ORCH-1905, ORCH-1907)."""
    return max(0, budget(rec) - rec.engine_tokens)


def expected_left(rec: TaskRecord, expect: Expect) -> int:
    """Tokens left of ``rec`` under ``expect`` (ORCH-1997, ORCH-2921)."""
    if expect is None:
        return tokens_left(rec)
    share, now, completed = expect
    return share.expected_left(budget(rec), rec.engine_tokens, now, completed=completed)


def tokens_in(rec: TaskRecord) -> int:
    """Its prompt tokens; an uncounted prompt (ORCH-1118) by the estimate made at
    admission from the pool's learned bytes per token (ORCH-1993), else 4 bytes a token."""
    if rec.prompt_counted:
        return rec.prompt_tokens
    return rec.prompt_estimate or len(rec.request.prompt.encode()) // 4


def job_of(rec: TaskRecord, expect: Expect = None, now: float | None = None) -> Job:
    """Its forecast inputs; at ``now`` with its guard limit if it has one (ORCH-2933), and
    the guard's decision its 202 told it (ORCH-2937)."""
    if now is None or rec.finish_guard is None:
        return Job(tokens_in(rec), expected_left(rec, expect), None, rec.told_hold)
    limit = (rec.finish_guard - now) * 1000
    return Job(tokens_in(rec), expected_left(rec, expect), limit, rec.told_hold)


def jobs_of(tasks: Iterable[TaskRecord], expect: Expect, now: float) -> list[Job]:
    """``[job_of(t, expect, now) for t in tasks]`` with the tokens left asked once per
    ``(budget, tokens so far)`` (ORCH-2944: the queued tasks are mostly alike)."""
    out: list[Job] = []
    lefts: dict[tuple[int, int], int] = {}
    for t in tasks:
        bud, so_far = budget(t), t.engine_tokens
        n = lefts.get((bud, so_far))
        if n is None:
            n = lefts[bud, so_far] = (
                max(0, bud - so_far)  # ``tokens_left``
                if expect is None
                else expect[0].expected_left(bud, so_far, expect[1], completed=expect[2])
            )
        guard = t.finish_guard
        limit = None if guard is None else (guard - now) * 1000
        out.append(Job(tokens_in(t), n, limit, t.told_hold))  # ORCH-2933, ORCH-2937
    return out


def prefill_terms(
    running: Iterable[TaskRecord], p: ModelParams, log: PromptIndex, now: float
) -> tuple[dict[int, float], list[tuple[float, int]], float]:
    """Of a replica's running tasks still prefilling (``Workload.loads``): each one's ms
    to its first token by ``id`` (ORCH-1996: batched with the prompts dispatched after
    it; ORCH-2914: past its forecast, a tenth of its time so far), their ``(dispatch,
    prompt tokens)``, and the largest of those ms (0.0 without one): when the replica's
    prefill in progress ends. ``p``: the replica model's ``params(now)``, ``log`` its
    dispatch log."""
    ttfts: dict[int, float] = {}
    prefilling: list[tuple[float, int]] = []
    pending = 0.0
    overhead = p.overhead_ms
    for t in running:
        if t.run_first_token is None and t.dispatched is not None:
            own = tokens_in(t)
            prefilling.append((t.dispatched, own))
            later, sq = log.between_squares(t.dispatched, now)  # ORCH-2941
            squares = own * own + t.run_prefill_ahead_sq + sq  # ORCH-2900
            # ``model.ttft_ms`` inline (ORCH-2941)
            ttft = overhead + p.prefill_ms(own + t.run_prefill_ahead + later, squares)
            left_ms = prefill_left(ttft, (now - t.dispatched) * 1000)
            ttfts[id(t)] = left_ms
            pending = max(pending, left_ms)
    return ttfts, prefilling, pending


def keep_answered(
    model: ServiceModel | None, rec: TaskRecord, running: Iterable[TaskRecord]
) -> None:
    """``rec``'s run has ended on the replica of ``model`` (None: no model yet): its
    measured prefill span is kept for the runs still there (ORCH-2926)."""
    first = rec.run_first_token
    if model is None or first is None or rec.dispatched is None:
        return
    firsts = [t.run_first_token for t in running if t.run_first_token is not None]
    # none has a first token: every span is dropped (each first token to come is later)
    model.answered(rec.dispatched, first, rec.run_prompt_tokens, min(firsts, default=math.inf))


def guard_limits(running: Iterable[TaskRecord], now: float) -> list[float]:
    """The running tasks' guard limits in ms from now, in their order (ORCH-2933)."""
    return [math.inf if t.finish_guard is None else (t.finish_guard - now) * 1000 for t in running]


def model_terms(p: ModelParams) -> tuple[float, ...]:
    """A model's learned terms for the DEBUG ``forecast`` line (ORCH-1994, ORCH-2900)."""
    return (
        round(p.overhead_ms),
        round(p.prefill_ms_per_token, 2),
        round(p.prefill_quad, 6),
        round(p.decode_ms_per_token, 1),
        round(p.slowdown, 2),
        round(p.decode_ctx, 5),
    )


def prompt_indexes(
    running: Iterable[TaskRecord],
    prefilling: list[tuple[float, int]],
    now: float,
    model: ServiceModel | None = None,
) -> tuple[PromptIndex, PromptIndex, Spans, Spans]:
    """The prompts of a replica's running tasks for :meth:`Workload.loads`: those still
    prefilling, those answered (ORCH-2911: they stalled the others from their dispatch
    to their first token, as measured; ORCH-2926: with the replica's ``model``, those
    of the runs ended since too, its ``answered_runs``), the union of those stalls, and
    of those with the stall in progress (ORCH-2909: from the earliest prompt undone to
    now)."""
    undone = PromptIndex(prefilling)
    answered = [
        (t.dispatched, t.run_first_token, tokens_in(t))
        for t in running
        if t.run_first_token is not None and t.dispatched is not None
    ]
    if model is not None:
        answered.extend(model.answered_runs())  # ORCH-2926
    measured = PromptIndex((d, n) for d, _, n in answered)
    spans = [(d, f) for d, f, _ in answered]
    stall_from = min((d for d, _ in prefilling), default=None)
    stalls = Spans(spans)
    stalls_now = Spans([*spans, (stall_from, now)]) if stall_from else stalls
    return undone, measured, stalls, stalls_now


def decoded_pace(
    t: TaskRecord,
    so_far: int,
    model: ServiceModel,
    p: ModelParams,
    log: PromptIndex,
    indexes: tuple[PromptIndex, PromptIndex, Spans, Spans],
    now: float,
    busy_now: int,
    per: float,
) -> Pace | None:
    """The live pace of a running task that has decoded ``so_far`` tokens of its run
    (ORCH-1977) on a replica whose model is ``model`` (its ``params(now)``: ``p``;
    its dispatch log: ``log``; :func:`prompt_indexes`: ``indexes``), against ``per``,
    its forecast ms a token left at ``busy_now`` busy slots (``Workload.loads``)."""
    # ORCH-1995: its pace net of the others' prompts prefilled meanwhile
    # (those still prefilling now are not done yet)
    # at their modelled cost those of tasks ended since, at their measured
    # prefill those of tasks running (ORCH-2911), and not the stall in
    # progress (ORCH-2909: ``pending`` below adds what is left of it)
    undone, measured, stalls, stalls_now = indexes
    first, last = t.run_first_token, t.last_token
    assert first is not None and last is not None
    done_last = (
        log.between(first, last) - undone.between(first, last) - measured.between(first, last)
    )
    done_now = (
        log.between(first, now) - undone.between(first, math.inf) - measured.between(first, now)
    )
    sq_last = log.squares(first, last) - undone.squares(first, last) - measured.squares(first, last)
    sq_now = (
        log.squares(first, now) - undone.squares(first, math.inf) - measured.squares(first, now)
    )
    net_last = (last - first - stalls.covered(first, last)) * 1000
    net_now = (now - first - stalls_now.covered(first, now)) * 1000
    # ORCH-2918: measured against the model at the busy slots it
    # decoded beside (their mean over its chunks) and its context so
    # far, not at the busy slots now: a task that decoded beside
    # another that has ended is not slow, it was busier
    then = model.decode_ms_per_token(
        t.busy_sum / t.run_chunks if t.run_chunks else busy_now,
        now,
        p,
        tokens_in(t) + t.run_tokens_before + so_far / 2,
    )
    return live_pace(  # ORCH-1977: the task's own pace so far
        then,
        so_far,
        max(0.0, net_last - p.prefill_ms(done_last, sq_last)),
        max(0.0, net_now - p.prefill_ms(done_now, sq_now)),
        per,
    )
