"""A replica's measured prefill pace (ORCH-2913, ORCH-2916): how much slower or
faster than its first-token line its recent prompts were.

The recent runs are measured against the line as it is after the latest of them
was learned, not each against the line before it learned that run: such a pace
counted the line's lag twice, once in the line that caught up and again in the
pace (issue #19, session 10: a steady engine's pace stayed at 1.4-1.9 for minutes
after one long prompt on a cold prior, and every prefill was forecast at that
multiple). Pure code: ``now`` is passed in.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["PrefillPace"]


class PrefillPace:
    """Decaying sums of measured and modelled prefill over the last ``RUNS`` runs."""

    HALF_LIFE_S = 120.0
    PRIOR_MS = 1000.0  # a prior of agreement, in ms of prefill
    BOUNDS = (0.5, 3.0)
    RUNS = 128  # older runs weigh < 1 % at a run a second

    __slots__ = ("_runs", "_sums")

    def __init__(self) -> None:
        # (when, first-token ms, prompt tokens, the sum of their sizes' squares)
        self._runs: deque[tuple[float, float, int, int]] = deque(maxlen=self.RUNS)
        self._sums: tuple[float, float, float] | None = None  # measured, modelled, when

    def add(self, now: float, ttft_ms: float, tokens: int, squares: int) -> bool:
        """A run's first token; False (and nothing kept) if it is not finite."""
        if not math.isfinite(ttft_ms):
            return False
        self._runs.append((now, max(0.0, ttft_ms), tokens, squares))
        return True

    def measure(self, overhead_ms: float, per_token: float, quad: float, cap: float) -> None:
        """Measure the runs kept against the line ``overhead_ms + min(per_token·n +
        quad·sq, cap·n)``: ``ModelParams.prefill_ms`` unpaced (ORCH-2900), computed here
        with that method's operations in its order, so the sums are the same to the last
        bit without a call per run (ORCH-2796: up to 128 runs at every observation)."""
        runs = self._runs
        if not runs:
            return
        latest = max(runs)[0]  # the largest time (tuples compare by time first)
        measured = modelled = 0.0
        half_life, pow_ = self.HALF_LIFE_S, math.pow
        for t, y, n, sq in runs:
            k = pow_(0.5, (latest - t) / half_life)
            measured += k * (y - overhead_ms)  # a run under the overhead counts too
            n = n if n > 0 else 0
            line = per_token * n + quad * (sq if sq > 0 else 0)
            capped = cap * n
            modelled += k * (capped if capped < line else line)  # min(line, capped)
        self._sums = (max(0.0, measured), modelled, latest)

    def pace(self, now: float) -> float:
        """Measured / modelled with the prior, decayed to ``now``, bounded."""
        if self._sums is None:
            return 1.0
        m, p, t = self._sums
        k = math.pow(0.5, max(0.0, now - t) / self.HALF_LIFE_S)
        lo, hi = self.BOUNDS
        return min(max((m * k + self.PRIOR_MS) / (p * k + self.PRIOR_MS), lo), hi)
