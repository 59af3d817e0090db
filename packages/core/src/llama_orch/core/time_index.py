"""Indexes over times that the service-time model queries many times at one instant
(ORCH-1990..1992, ORCH-2767, ORCH-2900, ORCH-2911, ORCH-2941): the prompt tokens
dispatched to a replica in a time window, and the union of measured time spans.

Pure code: nothing reads a clock.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable

__all__ = ["DispatchLog", "PromptIndex", "Spans"]


class PromptIndex:
    """Prompt tokens dispatched in ``(t0, t1]`` for many queries at one instant: the
    ``(time, tokens)`` pairs sorted once with their running sums (and sums of squares,
    ORCH-2900), O(log n) a query (a forecast asks twice per running task: issue #20's
    512-slot engine)."""

    __slots__ = ("_cum", "_pairs", "_sq", "_times")

    def __init__(self, dispatches: Iterable[tuple[float, int]]) -> None:
        pairs = sorted(dispatches)
        self._times = [t for t, _ in pairs]
        self._cum = [0, *itertools.accumulate(n for _, n in pairs)]
        self._sq: list[int] | None = None  # built on the first ``squares`` query
        self._pairs = pairs

    def _range(self, t0: float, t1: float) -> tuple[int, int]:
        return bisect.bisect_right(self._times, t0), bisect.bisect_right(self._times, t1)

    def between(self, t0: float, t1: float) -> int:
        if t1 <= t0:
            return 0
        i, j = self._range(t0, t1)
        return self._cum[j] - self._cum[i]

    def squares(self, t0: float, t1: float) -> int:
        """The sum of the squares of the prompt sizes dispatched in ``(t0, t1]``."""
        return self.between_squares(t0, t1)[1]

    def between_squares(self, t0: float, t1: float) -> tuple[int, int]:
        """``(between(t0, t1), squares(t0, t1))`` with one search (ORCH-2941)."""
        if t1 <= t0:
            return 0, 0
        if self._sq is None:
            self._sq = [0, *itertools.accumulate(n * n for _, n in self._pairs)]
        i, j = self._range(t0, t1)
        return self._cum[j] - self._cum[i], self._sq[j] - self._sq[i]


class DispatchLog(PromptIndex):
    """A :class:`PromptIndex` of the last ``maxlen`` dispatches, in the order they were
    dispatched (their times ascending), updated in place by :meth:`append`: amortized
    O(1) a dispatch instead of a sorted copy per forecast (ORCH-2767). Entries before
    ``_lo`` have left the log; they stay until a compaction rebases the sums."""

    __slots__ = ("_lo", "_maxlen")

    def __init__(self, dispatches: Iterable[tuple[float, int]], maxlen: int) -> None:
        pairs = list(dispatches)  # ascending times: the caller checked
        self._times = [t for t, _ in pairs]
        self._cum = [0, *itertools.accumulate(n for _, n in pairs)]
        self._sq = [0, *itertools.accumulate(n * n for _, n in pairs)]
        self._pairs = []  # the squares are kept up to date, never rebuilt from pairs
        self._lo = max(0, len(pairs) - maxlen)
        self._maxlen = maxlen

    def _range(self, t0: float, t1: float) -> tuple[int, int]:
        lo = self._lo
        return bisect.bisect_right(self._times, t0, lo), bisect.bisect_right(self._times, t1, lo)

    def append(self, t: float, n: int) -> None:
        """A dispatch at ``t`` no earlier than the last one; the oldest leaves a full log."""
        self._times.append(t)
        self._cum.append(self._cum[-1] + n)
        sq = self._sq
        assert sq is not None  # always built (no lazy squares here)
        sq.append(sq[-1] + n * n)
        if len(self._times) - self._lo > self._maxlen:
            self._lo += 1
        if self._lo >= self._maxlen:  # compact: drop what left, rebase the sums
            lo = self._lo
            del self._times[:lo]
            base, base_sq = self._cum[lo], sq[lo]
            self._cum = [c - base for c in self._cum[lo:]]
            self._sq = [c - base_sq for c in sq[lo:]]
            self._lo = 0


class Spans:
    """The union of time intervals, for many ``covered`` queries at one instant: the
    spans merged once, O(log n) a query (ORCH-2911: the measured prefills of the
    prompts beside a running task)."""

    __slots__ = ("_cum", "_ends", "_starts")

    def __init__(self, spans: Iterable[tuple[float, float]]) -> None:
        merged: list[list[float]] = []
        for a, b in sorted((a, b) for a, b in spans if b > a):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self._starts = [a for a, _ in merged]
        self._ends = [b for _, b in merged]
        self._cum = [0.0, *itertools.accumulate(b - a for a, b in merged)]

    def covered(self, t0: float, t1: float) -> float:
        """How much of ``[t0, t1]`` the spans cover."""
        if t1 <= t0:
            return 0.0
        i = bisect.bisect_right(self._ends, t0)  # the first span ending after t0
        j = bisect.bisect_left(self._starts, t1)  # past the last span starting before t1
        if j <= i:
            return 0.0
        total = self._cum[j] - self._cum[i]
        total -= max(0.0, t0 - self._starts[i])
        total -= max(0.0, self._ends[j - 1] - t1)
        return max(0.0, total)
