"""Service-time model of one replica, learned from what every task measures (ORCH-1950..1956).

A task's service time on a replica is split into the parts that scale with
different things, so that no kind of task can distort the others:

- **first token** (``ttft``): dispatch → first token = ``overhead`` +
  ``prefill`` x prompt tokens. Per-task overhead and prefill live here only:
  a 4-token task with a slow first token raises the overhead, never the
  per-token rate (issue #19's lockout came from dividing the whole service
  time by few tokens).
- **decode**: ms per output token after the first = ``decode`` x (1 +
  ``slowdown`` x (busy - 1)), where ``busy`` is the mean number of busy slots
  of the replica while the task decoded.

Other tasks' prompts get in the way (ORCH-1990..1992): an engine that batches
new prompts with running decodes (llama-server) delays a task's first token by
the prompts it is still prefilling for others (``ahead``) and its decode by the
prompts dispatched while it decodes (``co_prefill``). The model keeps the
prompt tokens dispatched to its replica with their times, learns each line net
of that interference, and adds the prompts still pending to a forecast's first
token. (A stretch of a busy replica's forecasts by its recent prefill share was
tried and measured worse: finish median error 61 % against 37 % without it.)

Each part is a :class:`RobustLine`: a weighted least-squares line over
exponentially decaying samples plus a fixed-weight prior (so without fresh
samples it decays toward the prior), with each sample's residual clipped to a
few times the running mean absolute residual (outliers move it little), and
the fitted parameters clamped to the range the samples and the prior span.
That clamp is what makes the idle forecast bounded by measurements
(ORCH-1953): an idle replica's per-token decode time is never more than the
slowest decode rate observed or the prior.

Pure code: every method takes ``now`` (monotonic seconds); nothing reads a clock.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ._prefill_pace import PrefillPace
from .time_index import DispatchLog, PromptIndex

__all__ = ["DEFAULT_PRIOR", "ModelParams", "Observation", "Prior", "RobustLine", "ServiceModel"]

Outcome = Literal["completed", "canceled", "failed"]


class Observation(NamedTuple):
    """What one run of a task measured on its replica."""

    tokens_in: int  # prompt tokens (0 when unknown)
    ttft_ms: float | None  # dispatch → first token; None: no token arrived
    decode_ms: float  # first token → last token
    tokens_out: int  # engine tokens generated
    busy: float  # mean busy slots of the replica while it decoded (≥ 1)
    outcome: Outcome
    ahead: int = 0  # others' prompt tokens prefilled before its first token (ORCH-1990)
    co_prefill: int = 0  # others' prompt tokens dispatched while it decoded (ORCH-1990)
    # the sum of the squares of the ``ahead`` prompts' sizes (ORCH-2900: each prompt's
    # quadratic prefill cost is its own); None: as if ``ahead`` were one prompt
    ahead_sq: int | None = None
    co_prefill_sq: int | None = None  # the squares of the ``co_prefill`` prompts' sizes


@dataclass(frozen=True, slots=True)
class Prior:
    """Where a replica's model starts and decays back to (ORCH-1954)."""

    overhead_ms: float = 50.0
    prefill_ms_per_token: float = 2.0
    decode_ms_per_token: float = 25.0
    slowdown: float = 0.25  # relative decode slowdown per extra busy slot
    weight: float = 0.1  # how many samples the prior is worth


# ORCH-2955: the prior of an engine with none of its own, built once (frozen), not at
# every model lookup (``Workload.model``: three a request)
DEFAULT_PRIOR = Prior()


class ModelParams(NamedTuple):
    overhead_ms: float
    prefill_ms_per_token: float
    decode_ms_per_token: float  # with one busy slot (idle replica)
    slowdown: float
    samples: float  # decayed weight of real samples behind the decode rate
    # ms per prompt token per prompt token: a prompt of n tokens costs
    # n x (prefill_ms_per_token + prefill_quad x n), at most n x prefill_cap (ORCH-2900)
    prefill_quad: float = 0.0
    prefill_cap: float = math.inf
    # ms per output token per token of context (prompt and output so far): attention
    # reads the whole cache; an idle replica's pace at most decode_cap (ORCH-2901)
    decode_ctx: float = 0.0
    decode_cap: float = math.inf
    # measured / modelled prefill of the replica's recent runs (ORCH-2913)
    prefill_pace: float = 1.0

    def prefill_ms(self, tokens: int, squares: int | None = None) -> float:
        """Prefill time of ``tokens`` prompt tokens in prompts whose sizes' squares sum
        to ``squares`` (one prompt when None) at the replica's measured prefill pace
        (ORCH-2913), capped at ``prefill_cap`` a token so that ORCH-1953's bound holds
        (ORCH-2900)."""
        n = max(0, tokens)
        sq = n * n if squares is None else max(0, squares)
        modelled = self.prefill_ms_per_token * n + self.prefill_quad * sq
        return min(self.prefill_pace * modelled, self.prefill_cap * n)

    def decode_ms(self, busy: float, context: float = 0.0) -> float:
        """ms per output token at ``busy`` busy slots (already clamped to the slots)
        with ``context`` tokens in its cache: the idle pace at that context, at most
        ``decode_cap`` (ORCH-1953, ORCH-2901), plus the slowdown of the other busy
        slots (ORCH-1950)."""
        idle = min(self.decode_ms_per_token + self.decode_ctx * max(0.0, context), self.decode_cap)
        return idle + self.decode_ms_per_token * self.slowdown * (busy - 1.0)


class RobustLine:
    """``y ≈ a + b·x`` (+ ``c·z``) from decaying, clipped samples and a fixed prior
    (ORCH-1951, ORCH-2900).

    Sufficient statistics are kept with weights that halve every
    ``half_life_s``; the prior is two pseudo-points of total weight
    ``prior_weight`` that never decay. ``a`` is clamped to ``[0, y_hi]`` (the
    largest ``y`` measured, prior included, before clipping) and ``b`` to ``≥ 0``.
    The first sample is not clipped: the prior's residual is a guess (ORCH-2924).

    With ``z_scale``, each sample has a second feature ``z`` (a prompt's squared
    size: ORCH-2900), fitted as ``c·z``: its coefficient is held toward 0 by a ridge
    of ``prior_weight`` samples at ``z = z_scale`` (no sample spanning ``z``: no
    curve), and kept only when both it and ``b`` come out ≥ 0; otherwise the line
    without it.
    """

    CLIP = 3.0  # residuals beyond CLIP x mean |residual| are clipped
    # ORCH-2924: the first sample is learned unclipped (before it the mean |residual|
    # is the prior's guess, not a measurement); True restores the old clipping
    CLIP_FIRST = False
    REL_FLOOR = 1.0  # relative clipping: predictions under this count as this

    def __init__(
        self,
        a0: float,
        b0: float,
        x_ref: float,
        prior_weight: float,
        half_life_s: float,
        z_scale: float | None = None,
        *,
        relative: bool = False,
    ) -> None:
        self._half_life = half_life_s
        self._relative = relative
        self._t: float | None = None
        self._w = self._wx = self._wy = self._wxx = self._wxy = 0.0
        self._z = z_scale  # None: no second feature
        self._wz = self._wzz = self._wxz = self._wzy = 0.0
        self._res = 0.0  # decayed weighted sum of |residual|
        self._seen = 0  # samples learned (ORCH-2924: the first is not clipped)
        y_ref = a0 + b0 * x_ref
        self._prior = ((0.0, a0, prior_weight / 2), (x_ref, y_ref, prior_weight / 2))
        # ORCH-2957: each pseudo-point's terms of the five sums, as ``params3`` added them
        # (``pw``, ``pw·x``, ``pw·y``, ``pw·x·x``, ``pw·x·y``), computed once
        self._prior_terms = tuple(
            (pw, pw * x, pw * y, pw * x * x, pw * x * y) for x, y, pw in self._prior
        )
        # wide at first: half the prior's larger value (relative: half of each prediction)
        self._prior_res = (0.5 if relative else 0.5 * max(abs(a0), abs(y_ref))) * prior_weight
        self._prior_weight = prior_weight
        self.y_hi = max(a0, y_ref)
        self.slope_hi = max(b0, 0.0)  # largest y/x seen (for lines through a 0 overhead)

    def _decay(self, now: float) -> None:
        if self._t is not None and now > self._t:
            k = 0.5 ** ((now - self._t) / self._half_life)
            self._w *= k
            self._wx *= k
            self._wy *= k
            self._wxx *= k
            self._wxy *= k
            self._wz *= k
            self._wzz *= k
            self._wxz *= k
            self._wzy *= k
            self._res *= k
        if self._t is None or now > self._t:
            self._t = now

    def weight(self, now: float) -> float:
        self._decay(now)
        return self._w

    def params(self, now: float) -> tuple[float, float]:
        """``(a, b)``, clamped (ORCH-1953)."""
        a, b, _ = self.params3(now)
        return a, b

    def params3(self, now: float) -> tuple[float, float, float]:
        """``(a, b, c)``, clamped (ORCH-1953); ``c`` is 0 without ``z_scale``."""
        self._decay(now)
        # the prior's two pseudo-points added in their order, their terms precomputed
        (w0, x0, y0, xx0, xy0), (w1, x1, y1, xx1, xy1) = self._prior_terms  # ORCH-2957
        w = self._w + w0 + w1
        wx = self._wx + x0 + x1
        wy = self._wy + y0 + y1
        wxx = self._wxx + xx0 + xx1
        wxy = self._wxy + xy0 + xy1
        mx, my = wx / w, wy / w
        sxx = wxx / w - mx * mx
        sxy = wxy / w - mx * my
        c = 0.0
        b = sxy / sxx if sxx > 1e-12 else 0.0
        if self._z is not None and self._wz > 0:
            # the prior's pseudo-points have z = 0 (a fixed line); the ridge holds c
            # toward 0 with the prior's weight at z = z_scale (ORCH-2900)
            mz = self._wz / w
            szz = self._wzz / w - mz * mz + self._prior_weight * self._z**2 / w
            sxz = self._wxz / w - mx * mz
            szy = self._wzy / w - mz * my
            det = sxx * szz - sxz * sxz
            if det > 1e-12 * max(1.0, sxx * szz):
                b3 = (sxy * szz - szy * sxz) / det
                c3 = (szy * sxx - sxy * sxz) / det
                if b3 >= 0 and c3 > 0:
                    b, c = b3, c3
                    my -= c * mz  # the intercept below: mean y less the curve's mean
        if b < 0:
            b = 0.0
        a = my - b * mx
        a = min(max(a, 0.0), self.y_hi)
        return a, b, c

    def predict(self, x: float, now: float, z: float = 0.0) -> float:
        a, b, c = self.params3(now)
        return a + b * x + c * z

    def observe(self, x: float, y: float, now: float, z: float | None = None) -> None:
        if not (math.isfinite(x) and math.isfinite(y)) or y < 0 or x < 0:
            return
        zz = 0.0 if z is None or self._z is None or not math.isfinite(z) else max(0.0, z)
        measured = y
        pred = self.predict(x, now, zz)  # decays first
        scale = (self._res + self._prior_res) / (self._w + self._prior_weight)
        # ORCH-2917: relative, ``scale`` is a mean |residual| / prediction
        size = max(abs(pred), self.REL_FLOOR) if self._relative else 1.0
        limit = self.CLIP * max(scale * size, 0.02 * abs(pred), 1e-6)
        if self._seen == 0 and not self.CLIP_FIRST:
            limit = math.inf  # ORCH-2924
        self._seen += 1
        r = min(max(y - pred, -limit), limit)
        y = pred + r
        self._res += abs(r) / size
        self._w += 1.0
        self._wx += x
        self._wy += y
        self._wxx += x * x
        self._wxy += x * y
        if self._z is not None:
            self._wz += zz
            self._wzz += zz * zz
            self._wxz += x * zz
            self._wzy += zz * y
        # The clamps follow what was measured, not the clipped sample: clipping pulls a
        # low outlier up toward the prediction, and a forecast must never exceed the
        # largest measurement (prior included) for that reason (ORCH-1953).
        self.y_hi = max(self.y_hi, measured)
        if x > 0:
            self.slope_hi = max(self.slope_hi, measured / x)


class ServiceModel:
    """The service-time model of one replica (ORCH-1950..1956)."""

    def __init__(self, prior: Prior, *, half_life_s: float = 600.0, slots: int = 1) -> None:
        self.prior = prior
        self.slots = max(1, slots)
        self.observations = 0
        x_ref = 256.0
        # first-token time against prompt tokens and their squares (ORCH-2900)
        self._ttft = RobustLine(
            prior.overhead_ms,
            prior.prefill_ms_per_token,
            x_ref,
            prior.weight,
            half_life_s,
            z_scale=self.QUAD_REF**2,
            relative=self.RELATIVE_TTFT,
        )
        # decode ms/token against (busy - 1) and the mean context (ORCH-2901)
        self._decode = RobustLine(
            prior.decode_ms_per_token,
            prior.decode_ms_per_token * prior.slowdown,
            max(1.0, self.slots - 1.0),
            prior.weight,
            half_life_s,
            z_scale=self.QUAD_REF,
        )
        # relative error of finish forecasts, for on_time_probability (ORCH-1956)
        self._err = RobustLine(0.25, 0.0, 1.0, prior.weight, half_life_s)
        # (time, prompt tokens) of the dispatches to this replica (ORCH-1990)
        self._dispatches: deque[tuple[float, int]] = deque(maxlen=self.DISPATCHES)
        # their index, kept up to date while dispatches come in time order (ORCH-2767)
        self._index: PromptIndex | None = None
        # the measured prefill spans of its ended runs (ORCH-2926): (dispatch, first
        # token, prompt tokens as logged), while a running task's decode may read them
        self._answered: deque[tuple[float, float, int]] = deque(maxlen=self.DISPATCHES)
        self._pace = PrefillPace()  # ORCH-2913, ORCH-2916
        # ORCH-2925: ORCH-1953's prefill_max, the largest ttft / tokens_in of a run with
        # a prompt of its own (prior included); the per-token cap never exceeds it
        self._prefill_hi = prior.prefill_ms_per_token
        # the last ``params`` and its ``now``: a forecast asks once per simulated job at
        # one instant (issue #20's admission cost); learning forgets it
        self._memo: tuple[float, ModelParams] | None = None

    DISPATCHES = 512
    # The first-token line clips its residuals relative to its prediction (ORCH-2917).
    RELATIVE_TTFT = True
    # The prompt size at which the squared prefill term's ridge holds it (ORCH-2900).
    QUAD_REF = 1000.0
    # A decode is learned net of others' prefill only while that is at most this share
    # of it, and once the prefill cost rests on this many samples (ORCH-1991).
    NET_MAX_SHARE = 0.5
    NET_MIN_SAMPLES = 5.0

    # ---------------------------------------------------------------- interference

    def dispatched(self, tokens_in: int, now: float) -> None:
        """A task with ``tokens_in`` prompt tokens was dispatched to the replica."""
        n = max(0, tokens_in)
        log = self._dispatches
        in_order = not log or now >= log[-1][0]
        log.append((now, n))
        if in_order and isinstance(self._index, DispatchLog):
            self._index.append(now, n)
        else:  # out of time order (a clock passed in): rebuilt at the next query
            self._index = None

    def answered(self, dispatched: float, first: float, tokens_in: int, keep_after: float) -> None:
        """A run that got its first token at ``first`` has ended on the replica: its
        measured prefill span from ``dispatched`` and its ``tokens_in`` as its dispatch
        logged them are kept (ORCH-2926); every kept span whose first token is at most
        ``keep_after`` (the earliest first token of the runs still on the replica, or
        now if none has one) is dropped: it covers no running task's decode."""
        kept = self._answered
        kept.append((dispatched, first, max(0, tokens_in)))
        if any(f <= keep_after for _, f, _ in kept):
            self._answered = deque((s for s in kept if s[1] > keep_after), maxlen=self.DISPATCHES)

    def answered_runs(self) -> Sequence[tuple[float, float, int]]:
        """The kept spans of ended runs (ORCH-2926), in the order they ended."""
        return self._answered

    def prompt_index(self) -> PromptIndex:
        """The dispatch log as a :class:`PromptIndex` (for many queries at once); a
        live view that later dispatches update (ORCH-2767)."""
        if self._index is None:
            log = self._dispatches
            if all(a[0] <= b[0] for a, b in itertools.pairwise(log)):
                self._index = DispatchLog(log, self.DISPATCHES)
            else:
                self._index = PromptIndex(log)
        return self._index

    def prompt_tokens_between(self, t0: float, t1: float) -> int:
        """Prompt tokens dispatched in ``(t0, t1]`` (one run's own dispatch at ``t0``
        is not counted)."""
        return self.prompt_index().between(t0, t1)

    def prompt_squares_between(self, t0: float, t1: float) -> int:
        """The sum of the squares of the prompt sizes dispatched in ``(t0, t1]``."""
        return self.prompt_index().squares(t0, t1)

    # ---------------------------------------------------------------- learning

    def observe(self, obs: Observation, now: float) -> None:
        """Learn from one run (ORCH-1952). Failed runs teach nothing (an engine
        fault is not a speed); a canceled run still measured its first token and
        the pace of the tokens it got."""
        if obs.outcome == "failed":
            return
        self._memo = None
        try:
            self._learn(obs, now)
        finally:
            self._memo = None  # the lines moved (``_learn`` may ask ``params`` midway)

    def _learn(self, obs: Observation, now: float) -> None:
        self.observations += 1
        if obs.ttft_ms is not None:
            own = max(0, obs.tokens_in)
            ahead = max(0, obs.ahead)
            x = float(own + ahead)
            # each prompt's squared size (ORCH-2900): the others' as told, else as one
            ahead_sq = ahead * ahead if obs.ahead_sq is None else max(0, obs.ahead_sq)
            self._ttft.observe(x, obs.ttft_ms, now, float(own * own + ahead_sq))
            if own > 0 and math.isfinite(obs.ttft_ms) and obs.ttft_ms >= 0:
                self._prefill_hi = max(self._prefill_hi, obs.ttft_ms / own)  # ORCH-2925
            # ORCH-2913/2916: the recent runs against the line that has learned this one
            if self._pace.add(now, obs.ttft_ms, own + ahead, own * own + ahead_sq):
                # unpaced; ORCH-2942: the first-token line's terms as ``params`` derives them,
                # the decode line only decayed to ``now`` as ``params`` did (steps matter)
                overhead, prefill, quad = self._ttft.params3(now)
                cap = min(self._ttft.slope_hi, self._prefill_hi)  # ORCH-2900, ORCH-2925
                self._decode.weight(now)
                self._pace.measure(overhead, min(prefill, cap), quad, cap)
            self._memo = None  # the line and the pace moved
        need = 2 if obs.outcome == "completed" else 3
        if obs.tokens_out >= need and obs.decode_ms > 0:
            decode_ms = obs.decode_ms
            if obs.co_prefill > 0:  # net of others' prefill (ORCH-1991)
                others = self.params(now).prefill_ms(obs.co_prefill, obs.co_prefill_sq)
                if (
                    self._ttft.weight(now) < self.NET_MIN_SAMPLES
                    or others > self.NET_MAX_SHARE * decode_ms
                ):
                    return  # mostly others' prefill: it says little about the pace
                decode_ms -= others
            per = decode_ms / (obs.tokens_out - 1)
            busy = min(max(obs.busy, 1.0), float(self.slots))
            # its mean context while it decoded: its prompt and half its output
            context = max(0, obs.tokens_in) + (obs.tokens_out - 1) / 2
            self._decode.observe(busy - 1.0, per, now, context)

    def prefill_pace(self, now: float) -> float:
        """Measured / modelled prefill of the replica's recent runs (ORCH-2913), against
        the first-token line as it was after the latest was learned (ORCH-2916)."""
        return self._pace.pace(now)

    def observe_error(self, predicted_ms: float, actual_ms: float, now: float) -> None:
        """How far a finish forecast was off (relative), for the on-time odds."""
        if predicted_ms > 0 and actual_ms > 0:
            self._err.observe(0.0, abs(math.log(actual_ms / predicted_ms)), now)

    # ---------------------------------------------------------------- predicting

    def params(self, now: float) -> ModelParams:
        memo = self._memo
        if memo is not None and memo[0] == now:
            return memo[1]
        overhead, prefill, quad = self._ttft.params3(now)
        cap = min(self._ttft.slope_hi, self._prefill_hi)  # ORCH-2900, ORCH-2925
        prefill = min(prefill, cap)
        decode, slope, ctx = self._decode.params3(now)
        slowdown = min(slope / decode, 2.0) if decode > 0 else 0.0
        p = ModelParams(
            overhead,
            prefill,
            decode,
            slowdown,
            self._decode.weight(now),
            quad,
            cap,
            ctx,
            self._decode.y_hi,
            self.prefill_pace(now),
        )
        self._memo = (now, p)
        return p

    # ``p``: this model's ``params(now)`` when the caller already has them (the same
    # values: params only decay to ``now``; issue #20, computed once per forecast step)
    def ttft_ms(
        self,
        tokens_in: int,
        now: float,
        p: ModelParams | None = None,
        squares: int | None = None,
    ) -> float:
        """Dispatch -> first token of prompts of ``tokens_in`` tokens in all whose
        sizes' squares sum to ``squares`` (one prompt when None, ORCH-2900)."""
        p = self.params(now) if p is None else p
        return p.overhead_ms + p.prefill_ms(tokens_in, squares)

    def decode_ms_per_token(
        self, busy: float, now: float, p: ModelParams | None = None, context: float = 0.0
    ) -> float:
        """At ``busy`` busy slots with ``context`` tokens in the task's cache
        (ORCH-2901). ``p``: this model's ``params(now)`` when the caller already has
        them."""
        p = self.params(now) if p is None else p
        busy = min(max(busy, 1.0), float(self.slots))
        return p.decode_ms(busy, context)

    def service_ms(
        self,
        tokens_in: int,
        tokens_out: int,
        busy: float,
        now: float,
        ahead: int = 0,
        *,
        pace: float = 1.0,
        ahead_sq: int | None = None,
    ) -> float:
        """Dispatch → last token of a task of that size at ``busy`` busy slots, with
        ``ahead`` prompt tokens of other tasks still to prefill before it (ORCH-1992;
        ``ahead_sq`` the sum of their sizes' squares, ORCH-2900: one prompt if None).
        ``pace``: the replica's decode now against its model (ORCH-1977)."""
        p = self.params(now)
        own = max(0, tokens_in)
        a = max(0, ahead)
        sq = own * own + (a * a if ahead_sq is None else max(0, ahead_sq))
        ttft = self.ttft_ms(own + a, now, p, sq)
        gaps = max(0, tokens_out - 1)
        decode = gaps * self.decode_ms_per_token(busy, now, p, own + gaps / 2)  # ORCH-2901
        return ttft + pace * decode

    def cv(self, floor: float, now: float) -> float:
        """Spread of finish forecasts: the mean |log error| seen, as a normal's sigma
        (mean absolute deviation = 0.8 sigma), at least ``floor``."""
        return max(floor, self._err.predict(0.0, now) / 0.8)
