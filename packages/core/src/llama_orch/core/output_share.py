"""How much of its token budget a pool's runs use (ORCH-2921..2923).

A forecast of a task's start waits for the slots held by the tasks ahead of it.
Taking each of them to run to its budget (ORCH-1997) over-predicts the start
when some end sooner: a client cancels, a run stops at EOS. This keeps, per pool,
the decaying distribution of ``tokens_out / budget`` of the runs that ended, with
each run's outcome: a cancel counts for the slot its task held (the work ahead),
never for a task's own finish (a canceled task has no finish to tell).

Pure code: ``now`` is passed in. O(1) a query, O(bins) a run learned.
"""

from __future__ import annotations

import itertools
import math
import operator

__all__ = ["OutputShare"]


class OutputShare:
    """Decaying histogram of the share of its budget each run used, with a prior of
    ``PRIOR`` pseudo-runs that used it all (ORCH-1997's rule, to which it returns)."""

    BINS = 32  # shares in [0, 1) by 1/32; one more bin for the whole budget
    PRIOR = 4.0  # pseudo-runs at the whole budget; never decays
    FORGET = 0.01  # samples weighing less than this share of the prior are forgotten

    __slots__ = ("_all", "_done", "_half_life_s", "_memo", "_t")

    def __init__(self, half_life_s: float = 600.0) -> None:
        self._half_life_s = half_life_s
        self._t: float | None = None  # when the weights below were last decayed
        # per kind (all runs / completed runs only): weights and weighted shares per
        # bin, then their suffix sums (bin k onwards), recomputed when a run is learned
        self._all = _Hist(self.BINS)
        self._done = _Hist(self.BINS)
        # the last ``_scale``: its ``now``, ``_t`` and value (ORCH-2941: a forecast asks
        # once per running task at one instant)
        self._memo: tuple[float, float, float] | None = None

    def observe(self, tokens_out: int, budget: int, *, canceled: bool, now: float) -> None:
        """A run ended after ``tokens_out`` of its ``budget`` tokens (completed or
        canceled; failed runs are not learned from, ORCH-2921)."""
        if budget <= 0:
            return
        share = min(1.0, max(0.0, tokens_out / budget))
        k = self.BINS if share >= 1.0 else int(share * self.BINS)
        scale = self._scale(now)
        self._t = now if self._t is None else max(self._t, now)
        for h in (self._all, self._done):
            h.decay(scale)
        self._all.add(k, share)
        if not canceled:
            self._done.add(k, share)

    def _scale(self, now: float) -> float:
        t = self._t
        if t is None or now <= t:
            return 1.0
        memo = self._memo
        if memo is not None and memo[0] == now and memo[1] == t:
            return memo[2]
        scale = math.pow(0.5, (now - t) / self._half_life_s)
        self._memo = (now, t, scale)
        return scale

    def cancels(self, now: float) -> bool:
        """Whether canceled runs still weigh (the two expectations can differ)."""
        w = self._all.sw[0] - self._done.sw[0]
        return self._scale(now) * w >= self.FORGET * self.PRIOR

    def expected_left(self, budget: int, so_far: int, now: float, *, completed: bool) -> int:
        """Expected tokens still to come of a task with ``budget`` that has generated
        ``so_far`` (ORCH-2921): over the runs that used more than that share (all runs
        for the slot it holds; ``completed`` runs only for its own finish), at most
        ``budget - so_far``."""
        left = budget - so_far
        if left <= 0:
            return 0
        if self._t is None:
            return left
        u = so_far / budget
        w, wf = (self._done if completed else self._all).above(u)
        scale = self._scale(now)
        if scale * w < self.FORGET * self.PRIOR:
            return left
        share = (self.PRIOR * (1.0 - u) + scale * (wf - u * w)) / (self.PRIOR + scale * w)
        return min(left, max(0, round(budget * share)))


class _Hist:
    """Weights and weighted shares per bin, with their suffix sums."""

    __slots__ = ("_at", "_sw", "_swf", "bins", "w", "wf")

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.w = [0.0] * (bins + 1)
        self.wf = [0.0] * (bins + 1)
        self._sw = [0.0] * (bins + 2)
        self._swf = [0.0] * (bins + 2)
        # ORCH-2952: the bins as the last run added left them, while their suffix sums are
        # not summed yet (None: summed). ``decay`` makes new lists, never changes these.
        self._at: tuple[list[float], list[float]] | None = None

    def decay(self, scale: float) -> None:
        if scale != 1.0:  # ORCH-2943: ``x * scale`` per bin, in C
            mul = scale.__mul__
            self.w = list(map(mul, self.w))
            self.wf = list(map(mul, self.wf))

    def add(self, k: int, share: float) -> None:
        self.w[k] += 1.0
        self.wf[k] += share
        self._at = (self.w, self.wf)  # ORCH-2952: summed at the next read, not here

    def _sum(self) -> None:
        # ORCH-2943: the suffix sums from 0.0, bin ``bins`` down to 0, added in that
        # order (as a loop would), then the one past the end (0.0) kept; ORCH-2952: of
        # the bins as the last run added left them (a decay since does not enter them)
        assert self._at is not None
        w, wf = self._at
        sw = list(itertools.accumulate(reversed(w), operator.add, initial=0.0))
        swf = list(itertools.accumulate(reversed(wf), operator.add, initial=0.0))
        sw.reverse()
        swf.reverse()
        self._sw, self._swf, self._at = sw, swf, None

    @property
    def sw(self) -> list[float]:
        """Weight of the bins from ``k`` on, at ``k``."""
        if self._at is not None:
            self._sum()
        return self._sw

    @property
    def swf(self) -> list[float]:
        """Weighted share of the bins from ``k`` on, at ``k``."""
        if self._at is not None:
            self._sum()
        return self._swf

    def above(self, u: float) -> tuple[float, float]:
        """Weight and weighted share of the runs with a share above ``u``: the bins
        above ``u``'s, and ``u``'s own bin at its mean if that is above ``u``."""
        k = min(self.bins, int(u * self.bins))
        if self._at is not None:
            self._sum()
        w, wf = self._sw[k + 1], self._swf[k + 1]
        if self.w[k] > 0.0 and self.wf[k] > u * self.w[k]:
            w += self.w[k]
            wf += self.wf[k]
        return w, wf
