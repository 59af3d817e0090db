"""The service-time model's cost per request, cut with its numbers kept to the bit
(ORCH-2940..2943): each cut against the code it replaced (9d35416), kept here as a
reference, driven with arbitrary sequences and compared with ``==`` on floats."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core import output_share as share_mod
from llama_orch.core._prefill_pace import PrefillPace
from llama_orch.core.output_share import OutputShare
from llama_orch.core.servicetime import Observation, Prior, ServiceModel


class _RefPace(PrefillPace):
    """``PrefillPace`` as of 9d35416: sizes clamped at every ``measure``, ``max`` over
    the runs for the latest time."""

    def add(self, now: float, ttft_ms: float, tokens: int, squares: int) -> bool:
        if not math.isfinite(ttft_ms):
            return False
        self._runs.append((now, max(0.0, ttft_ms), tokens, squares))
        return True

    def measure(self, overhead_ms: float, per_token: float, quad: float, cap: float) -> None:
        runs = self._runs
        if not runs:
            return
        latest = max(runs)[0]
        measured = modelled = 0.0
        half_life, pow_ = self.HALF_LIFE_S, math.pow
        for t, y, n, sq in runs:
            k = pow_(0.5, (latest - t) / half_life)
            measured += k * (y - overhead_ms)
            n = n if n > 0 else 0
            line = per_token * n + quad * (sq if sq > 0 else 0)
            capped = cap * n
            modelled += k * (capped if capped < line else line)
        self._sums = (max(0.0, measured), modelled, latest)


class _RefModel(ServiceModel):
    """``ServiceModel`` whose learning is 9d35416's: the whole ``params`` derived for
    the pace measured (ORCH-2942's cut is what it replaced)."""

    def __init__(self, prior: Prior, *, half_life_s: float = 600.0, slots: int = 1) -> None:
        super().__init__(prior, half_life_s=half_life_s, slots=slots)
        self._pace = _RefPace()

    def _learn(self, obs: Observation, now: float) -> None:
        self.observations += 1
        if obs.ttft_ms is not None:
            own = max(0, obs.tokens_in)
            ahead = max(0, obs.ahead)
            x = float(own + ahead)
            ahead_sq = ahead * ahead if obs.ahead_sq is None else max(0, obs.ahead_sq)
            self._ttft.observe(x, obs.ttft_ms, now, float(own * own + ahead_sq))
            if own > 0 and math.isfinite(obs.ttft_ms) and obs.ttft_ms >= 0:
                self._prefill_hi = max(self._prefill_hi, obs.ttft_ms / own)
            if self._pace.add(now, obs.ttft_ms, own + ahead, own * own + ahead_sq):
                self._memo = None
                p = self.params(now)
                self._pace.measure(
                    p.overhead_ms, p.prefill_ms_per_token, p.prefill_quad, p.prefill_cap
                )
            self._memo = None
        need = 2 if obs.outcome == "completed" else 3
        if obs.tokens_out >= need and obs.decode_ms > 0:
            decode_ms = obs.decode_ms
            if obs.co_prefill > 0:
                others = self.params(now).prefill_ms(obs.co_prefill, obs.co_prefill_sq)
                if (
                    self._ttft.weight(now) < self.NET_MIN_SAMPLES
                    or others > self.NET_MAX_SHARE * decode_ms
                ):
                    return
                decode_ms -= others
            per = decode_ms / (obs.tokens_out - 1)
            busy = min(max(obs.busy, 1.0), float(self.slots))
            context = max(0, obs.tokens_in) + (obs.tokens_out - 1) / 2
            self._decode.observe(busy - 1.0, per, now, context)


_OBS = st.tuples(
    st.floats(-2.0, 30.0),  # seconds since the step before (0: the same instant; < 0 back)
    st.integers(-5, 3000),  # tokens_in
    st.one_of(st.none(), st.floats(-10.0, 1e5), st.just(math.inf)),  # ttft_ms
    st.floats(0.0, 1e5),  # decode_ms
    st.integers(0, 500),  # tokens_out
    st.floats(0.0, 8.0),  # busy
    st.sampled_from(["completed", "canceled", "failed"]),
    st.integers(-3, 5000),  # ahead
    st.integers(0, 5000),  # co_prefill
    st.one_of(st.none(), st.integers(-3, 10**7)),  # ahead_sq
    st.one_of(st.none(), st.integers(0, 10**7)),  # co_prefill_sq
    st.booleans(),  # a query at this instant before the run is learned
    st.floats(-1.0, 5.0),  # a dispatch this long after (a clock may go back)
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_OBS, min_size=1, max_size=160),
    st.integers(1, 8),
    st.floats(1.0, 100.0),
    st.floats(0.01, 20.0),
)
def test_learning_equals_9d35416_to_the_bit(obs, slots, decode_ms, prefill_ms):
    """ORCH-2940, ORCH-2942: the same runs learned by the model and by 9d35416's (its
    ``_learn`` and ``PrefillPace``) give the same parameters, pace, first-token and
    service forecasts and on-time spread, to the last bit, at every step (``==``)."""
    prior = Prior(decode_ms_per_token=decode_ms, prefill_ms_per_token=prefill_ms)
    new, ref = ServiceModel(prior, slots=slots), _RefModel(prior, slots=slots)
    t = 100.0
    for dt, tin, ttft, dec, tout, busy, outcome, ahead, co, a_sq, co_sq, ask, disp in obs:
        t += dt
        if ask:
            assert new.params(t) == ref.params(t)
        for m in (new, ref):
            m.dispatched(tin, t + disp)
        o = Observation(tin, ttft, dec, tout, busy, outcome, ahead, co, a_sq, co_sq)
        new.observe(o, t)
        ref.observe(o, t)
        new.observe_error(dec + 1.0, dec + tout + 1.0, t)
        ref.observe_error(dec + 1.0, dec + tout + 1.0, t)
        assert new._pace.sums() == ref._pace._sums  # ORCH-2951: read, so computed
        assert new.prefill_pace(t) == ref.prefill_pace(t)
        assert new.params(t) == ref.params(t)
        later = t + abs(dt) / 2
        assert new.params(later) == ref.params(later)
        assert new.ttft_ms(tin, later) == ref.ttft_ms(tin, later)
        assert new.service_ms(tin, tout, busy, later, ahead) == ref.service_ms(
            tin, tout, busy, later, ahead
        )
        assert new.cv(0.25, later) == ref.cv(0.25, later)


class _RefHist:
    """``output_share._Hist`` as of 9d35416: a Python loop per bin."""

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.w = [0.0] * (bins + 1)
        self.wf = [0.0] * (bins + 1)
        self.sw = [0.0] * (bins + 2)
        self.swf = [0.0] * (bins + 2)

    def decay(self, scale: float) -> None:
        if scale != 1.0:
            self.w = [x * scale for x in self.w]
            self.wf = [x * scale for x in self.wf]

    def add(self, k: int, share: float) -> None:
        self.w[k] += 1.0
        self.wf[k] += share
        sw = swf = 0.0
        for i in range(self.bins, -1, -1):
            sw += self.w[i]
            swf += self.wf[i]
            self.sw[i], self.swf[i] = sw, swf

    def above(self, u: float) -> tuple[float, float]:
        k = min(self.bins, int(u * self.bins))
        w, wf = self.sw[k + 1], self.swf[k + 1]
        if self.w[k] > 0.0 and self.wf[k] > u * self.w[k]:
            w += self.w[k]
            wf += self.wf[k]
        return w, wf


class _RefShare(OutputShare):
    """``OutputShare`` as of 9d35416: its bins as ``_RefHist``, no memo of the scale."""

    def __init__(self, half_life_s: float = 600.0) -> None:
        super().__init__(half_life_s)
        self._all = _RefHist(self.BINS)  # type: ignore[assignment]
        self._done = _RefHist(self.BINS)  # type: ignore[assignment]

    def _scale(self, now: float) -> float:
        if self._t is None or now <= self._t:
            return 1.0
        return math.pow(0.5, (now - self._t) / self._half_life_s)


_RUN = st.tuples(
    st.floats(-5.0, 400.0),  # seconds since the step before (a clock may go back)
    st.integers(0, 600),  # tokens out
    st.integers(-2, 500),  # budget
    st.booleans(),  # canceled
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500), st.floats(0.0, 100.0))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_RUN, max_size=120), st.floats(1.0, 3600.0))
def test_output_share_equals_9d35416_to_the_bit(runs, half_life):
    """ORCH-2940, ORCH-2941, ORCH-2943: the same runs learned by ``OutputShare`` and by
    9d35416's give the same bins, suffix sums, expectations and ``cancels``, with
    queries before and after each run at repeated and later instants (the memo of
    the decay factor)."""
    new, ref = OutputShare(half_life), _RefShare(half_life)
    t = 0.0
    for dt, out, budget, canceled, queries in runs:
        t += dt
        for b, so_far, later in queries:
            for now in (t, t + later, t):
                for completed in (False, True):
                    assert new.expected_left(b, so_far, now, completed=completed) == (
                        ref.expected_left(b, so_far, now, completed=completed)
                    )
                assert new.cancels(now) == ref.cancels(now)
        new.observe(out, budget, canceled=canceled, now=t)
        ref.observe(out, budget, canceled=canceled, now=t)
        for h, r in ((new._all, ref._all), (new._done, ref._done)):
            assert (h.w, h.wf, h.sw, h.swf) == (r.w, r.wf, r.sw, r.swf)


def test_the_references_are_not_the_code_under_test():
    """The properties above compare two implementations, not one with itself."""
    assert _RefPace.measure is not PrefillPace.measure
    assert _RefModel._learn is not ServiceModel._learn
    assert _RefHist.add is not share_mod._Hist.add
    assert isinstance(_RefModel(Prior())._pace, _RefPace)
