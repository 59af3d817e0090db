"""What a forecast takes of a task (ORCH-1957): its prompt tokens and its tokens
left, by its budget or by its pool's learned output shares (ORCH-1997,
ORCH-2921, ORCH-2922); and a model's terms for the DEBUG ``forecast`` line."""

from __future__ import annotations

from llama_orch.core.eta import Job
from llama_orch.core.output_share import OutputShare
from llama_orch.core.servicetime import ModelParams

from .tasks import TaskRecord

__all__ = [
    "Expect",
    "budget",
    "expected_left",
    "job_of",
    "model_terms",
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


def job_of(rec: TaskRecord, expect: Expect = None) -> Job:
    return Job(tokens_in(rec), expected_left(rec, expect))


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
