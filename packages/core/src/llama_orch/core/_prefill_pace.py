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

_Run = tuple[float, float, int, int]


class PrefillPace:
    """Decaying sums of measured and modelled prefill over the last ``RUNS`` runs."""

    HALF_LIFE_S = 120.0
    PRIOR_MS = 1000.0  # a prior of agreement, in ms of prefill
    BOUNDS = (0.5, 3.0)
    RUNS = 128  # older runs weigh < 1 % at a run a second

    __slots__ = ("_in_order", "_pending", "_runs", "_sums")

    def __init__(self) -> None:
        # (when, first-token ms, prompt tokens, the sum of their sizes' squares), the
        # sizes at least 0 (ORCH-2942: clamped once here, not at every ``measure``)
        self._runs: deque[_Run] = deque(maxlen=self.RUNS)
        self._sums: tuple[float, float, float] | None = None  # measured, modelled, when
        self._in_order = True  # every run added no earlier than the one before it
        # ORCH-2951: the last ``measure`` not yet computed: its line and the runs it
        # measures (a copy: runs added later are not its), computed at the first read
        self._pending: tuple[tuple[float, float, float, float], tuple[_Run, ...], bool] | None = (
            None
        )

    def add(self, now: float, ttft_ms: float, tokens: int, squares: int) -> bool:
        """A run's first token; False (and nothing kept) if it is not finite."""
        if not math.isfinite(ttft_ms):
            return False
        runs = self._runs
        if runs and now < runs[-1][0]:
            self._in_order = False  # a clock passed in went back: ``max`` from now on
        runs.append(
            (now, max(0.0, ttft_ms), tokens if tokens > 0 else 0, squares if squares > 0 else 0)
        )
        return True

    def measure(self, overhead_ms: float, per_token: float, quad: float, cap: float) -> None:
        """Measure the runs kept against the line ``overhead_ms + min(per_token·n +
        quad·sq, cap·n)``: ``ModelParams.prefill_ms`` unpaced (ORCH-2900), computed here
        with that method's operations in its order, so the sums are the same to the last
        bit without a call per run (ORCH-2796: up to 128 runs at every observation).

        ORCH-2951: kept, not computed, until :meth:`sums` or :meth:`pace` reads it: a
        measure that a later one replaces before any read is never computed (in the
        bench 73 % of them: task ends come in bursts between the forecasts' reads)."""
        if self._runs:
            self._pending = ((overhead_ms, per_token, quad, cap), tuple(self._runs), self._in_order)

    def sums(self) -> tuple[float, float, float] | None:
        """The decaying sums of the last ``measure`` (measured, modelled, its latest
        run's time); None before one."""
        if self._pending is not None:
            terms, runs, in_order = self._pending
            self._pending = None
            self._measure(runs, in_order, *terms)
        return self._sums

    def _measure(
        self,
        runs: tuple[_Run, ...],
        in_order: bool,
        overhead_ms: float,
        per_token: float,
        quad: float,
        cap: float,
    ) -> None:
        # the largest time: the last run's while they came in time order (ORCH-2942)
        latest = runs[-1][0] if in_order else max(runs)[0]
        measured = modelled = 0.0
        half_life, pow_ = self.HALF_LIFE_S, math.pow
        for t, y, n, sq in runs:  # n, sq: at least 0 (``add``)
            k = pow_(0.5, (latest - t) / half_life)
            measured += k * (y - overhead_ms)  # a run under the overhead counts too
            line = per_token * n + quad * sq
            capped = cap * n
            modelled += k * (capped if capped < line else line)  # min(line, capped)
        self._sums = (max(0.0, measured), modelled, latest)

    def pace(self, now: float) -> float:
        """Measured / modelled with the prior, decayed to ``now``, bounded."""
        sums = self._sums if self._pending is None else self.sums()
        if sums is None:
            return 1.0
        m, p, t = sums
        k = math.pow(0.5, max(0.0, now - t) / self.HALF_LIFE_S)
        lo, hi = self.BOUNDS
        return min(max((m * k + self.PRIOR_MS) / (p * k + self.PRIOR_MS), lo), hi)
