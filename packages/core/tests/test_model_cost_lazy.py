"""The service-time model's cost per request, third pass (ORCH-2951, ORCH-2952): work kept
until it is read, against the eager code it replaced (9907fbc's), driven with
arbitrary sequences and compared with ``==`` on floats (ORCH-2940)."""

from __future__ import annotations

import itertools
import math
import operator

from hypothesis import example, given, settings
from hypothesis import strategies as st
from llama_orch.core import output_share as share_mod
from llama_orch.core._prefill_pace import PrefillPace
from llama_orch.core.output_share import OutputShare


class _EagerPace(PrefillPace):
    """``PrefillPace`` as of 9907fbc: ``measure`` computes the sums at once."""

    def measure(self, overhead_ms: float, per_token: float, quad: float, cap: float) -> None:
        runs = self._runs
        if not runs:
            return
        latest = runs[-1][0] if self._in_order else max(runs)[0]
        measured = modelled = 0.0
        half_life, pow_ = self.HALF_LIFE_S, math.pow
        for t, y, n, sq in runs:
            k = pow_(0.5, (latest - t) / half_life)
            measured += k * (y - overhead_ms)
            line = per_token * n + quad * sq
            capped = cap * n
            modelled += k * (capped if capped < line else line)
        self._sums = (max(0.0, measured), modelled, latest)

    def sums(self) -> tuple[float, float, float] | None:
        return self._sums


_PACE_OP = st.one_of(
    st.tuples(
        st.just("add"),
        st.floats(-3.0, 60.0),  # seconds since the step before (< 0: a clock going back)
        st.one_of(st.floats(-50.0, 1e5), st.just(math.inf), st.just(math.nan)),
        st.integers(-5, 4000),
        st.integers(-5, 10**7),
    ),
    st.tuples(
        st.just("measure"),
        st.floats(0.0, 500.0),
        st.floats(0.0, 20.0),
        st.floats(0.0, 1e-3),
        st.one_of(st.floats(0.0, 30.0), st.just(math.inf)),
    ),
    st.tuples(st.just("read"), st.floats(-10.0, 900.0)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PACE_OP, max_size=200))
@example(  # a run added after a measure and before its read: not the measure's
    [
        ("add", 1.0, 100.0, 10, 100),
        ("measure", 10.0, 2.0, 0.0, 30.0),
        ("add", 1.0, 5000.0, 10, 100),
        ("read", 0.0),
    ]
)
@example(  # a clock that went back before a measure, a run after it, a read
    [
        ("add", 5.0, 100.0, 10, 100),
        ("add", -3.0, 400.0, 20, 400),
        ("measure", 10.0, 2.0, 0.0, 30.0),
        ("add", 9.0, 50.0, 1, 1),
        ("read", 1.0),
    ]
)
def test_a_kept_measure_is_the_eager_one(ops):
    """ORCH-2940, ORCH-2951: ``PrefillPace`` with its measures kept until read gives the
    same sums and pace as 9907fbc's eager one, to the last bit, for any sequence of runs
    (out of time order and not finite included), measures and reads; runs added between
    a measure and its read do not enter it."""
    new, ref = PrefillPace(), _EagerPace()
    t = 1000.0
    for op in ops:
        if op[0] == "add":
            _, dt, ttft, n, sq = op
            t += dt
            assert new.add(t, ttft, n, sq) == ref.add(t, ttft, n, sq)
        elif op[0] == "measure":
            new.measure(*op[1:])
            ref.measure(*op[1:])
        else:
            when = t + op[1]
            assert new.pace(when) == ref.pace(when)
            assert new.sums() == ref.sums()
    assert new.sums() == ref.sums()
    assert new.pace(t) == ref.pace(t)


def test_the_reference_is_eager():
    """The property compares two implementations: the reference computes at ``measure``."""
    ref = _EagerPace()
    ref.add(1.0, 100.0, 10, 100)
    ref.measure(10.0, 2.0, 0.0, 30.0)
    assert ref._sums is not None and ref._pending is None
    new = PrefillPace()
    new.add(1.0, 100.0, 10, 100)
    new.measure(10.0, 2.0, 0.0, 30.0)
    assert new._sums is None and new._pending is not None
    assert new.sums() == ref.sums()


class _EagerHist:
    """``output_share._Hist`` as of 9907fbc: the suffix sums summed at every run added."""

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.w = [0.0] * (bins + 1)
        self.wf = [0.0] * (bins + 1)
        self.sw = [0.0] * (bins + 2)
        self.swf = [0.0] * (bins + 2)

    def decay(self, scale: float) -> None:
        if scale != 1.0:
            mul = scale.__mul__
            self.w = list(map(mul, self.w))
            self.wf = list(map(mul, self.wf))

    def add(self, k: int, share: float) -> None:
        self.w[k] += 1.0
        self.wf[k] += share
        sw = list(itertools.accumulate(reversed(self.w), operator.add, initial=0.0))
        swf = list(itertools.accumulate(reversed(self.wf), operator.add, initial=0.0))
        sw.reverse()
        swf.reverse()
        self.sw, self.swf = sw, swf

    def above(self, u: float) -> tuple[float, float]:
        k = min(self.bins, int(u * self.bins))
        w, wf = self.sw[k + 1], self.swf[k + 1]
        if self.w[k] > 0.0 and self.wf[k] > u * self.w[k]:
            w += self.w[k]
            wf += self.wf[k]
        return w, wf


class _EagerShare(OutputShare):
    """``OutputShare`` with 9907fbc's bins (``_EagerHist``)."""

    def __init__(self, half_life_s: float = 600.0) -> None:
        super().__init__(half_life_s)
        self._all = _EagerHist(self.BINS)  # type: ignore[assignment]
        self._done = _EagerHist(self.BINS)  # type: ignore[assignment]


_SHARE_OP = st.one_of(
    st.tuples(
        st.just("run"),
        st.floats(-5.0, 400.0),  # seconds since the step before (a clock may go back)
        st.integers(0, 600),  # tokens out
        st.integers(-2, 500),  # budget
        st.booleans(),  # canceled
    ),
    st.tuples(
        st.just("read"),
        st.integers(0, 500),  # budget
        st.integers(0, 500),  # tokens so far
        st.floats(0.0, 100.0),  # s after the last run
        st.booleans(),  # completed
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_SHARE_OP, max_size=160), st.floats(1.0, 3600.0))
@example(  # two runs learned with no read between: the first's sums are never summed
    [
        ("run", 1.0, 10, 100, False),
        ("run", 1.0, 90, 100, False),
        ("read", 100, 5, 0.0, False),
    ],
    600.0,
)
@example(  # a canceled run decays the completed runs' bins and adds none: their sums stay
    [  # those of the bins before that decay (9907fbc's, kept as they were: ORCH-2940)
        ("run", 1.0, 10, 100, False),
        ("run", 1.0, 90, 100, True),
        ("read", 100, 5, 0.0, True),
    ],
    600.0,
)
def test_suffix_sums_kept_until_read_are_the_eager_ones(ops, half_life):
    """ORCH-2940, ORCH-2952: ``OutputShare`` summing its bins' suffix sums at the first
    read after runs are learned gives 9907fbc's expectations, ``cancels`` and bins (its
    sums at every run) to the last bit, for any runs, often several between reads."""
    new, ref = OutputShare(half_life), _EagerShare(half_life)
    t = 0.0
    for op in ops:
        if op[0] == "run":
            _, dt, out, budget, canceled = op
            t += dt
            new.observe(out, budget, canceled=canceled, now=t)
            ref.observe(out, budget, canceled=canceled, now=t)
        else:
            _, budget, so_far, later, completed = op
            now = t + later
            got = new.expected_left(budget, so_far, now, completed=completed)
            assert got == ref.expected_left(budget, so_far, now, completed=completed)
            assert new.cancels(now) == ref.cancels(now)
    for h, r in ((new._all, ref._all), (new._done, ref._done)):
        assert (h.w, h.wf, h.sw, h.swf) == (r.w, r.wf, r.sw, r.swf)


def test_the_share_reference_sums_at_every_run():
    """The property compares two implementations: the reference's sums are current at
    once, the code's only when read."""
    assert _EagerHist.add is not share_mod._Hist.add
    share = OutputShare()
    share.observe(5, 10, canceled=False, now=1.0)
    assert share._all._at is not None
    assert share._all.sw[0] == 1.0 and share._all._at is None
