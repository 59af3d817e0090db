"""The service-time model's cost per request, fourth pass (ORCH-2957): ``RobustLine``
adds its prior's pseudo-points from terms computed once, against the loop it replaced
(242e426's), driven with arbitrary sequences and compared with ``==`` on floats
(ORCH-2940)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.servicetime import RobustLine


class _RefLine(RobustLine):
    """``RobustLine`` as of 242e426: the prior added by a loop at every ``params3``
    (``observe`` and ``predict`` call it, so they run 242e426's code too)."""

    def params3(self, now: float) -> tuple[float, float, float]:
        self._decay(now)
        w, wx, wy, wxx, wxy = self._w, self._wx, self._wy, self._wxx, self._wxy
        for x, y, pw in self._prior:
            w += pw
            wx += pw * x
            wy += pw * y
            wxx += pw * x * x
            wxy += pw * x * y
        mx, my = wx / w, wy / w
        sxx = wxx / w - mx * mx
        sxy = wxy / w - mx * my
        c = 0.0
        b = sxy / sxx if sxx > 1e-12 else 0.0
        if self._z is not None and self._wz > 0:
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
                    my -= c * mz
        if b < 0:
            b = 0.0
        a = my - b * mx
        a = min(max(a, 0.0), self.y_hi)
        return a, b, c


_pos = st.floats(0.0, 1e6, allow_nan=False)
_any = st.floats(allow_nan=True, allow_infinity=True)
_OP = st.one_of(
    st.tuples(st.just("observe"), _pos | _any, _pos | _any, st.floats(0, 50), st.none() | _pos),
    st.tuples(st.just("params3"), st.floats(0, 50)),
    st.tuples(st.just("predict"), _pos, st.floats(0, 50), _pos),
)


def _same(a: object, b: object) -> bool:
    """Equal, NaN included (a NaN sample is refused by ``observe``, but be exact)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@settings(max_examples=400, deadline=None)
@given(
    a0=st.floats(0, 1e4),
    b0=st.floats(0, 10),
    x_ref=st.floats(0, 1e5),
    prior_weight=st.floats(0.01, 100),
    half_life=st.floats(1, 3600),
    z_scale=st.none() | st.floats(1, 1e10),
    relative=st.booleans(),
    ops=st.lists(_OP, max_size=40),
)
def test_params3_is_the_loops(
    a0: float,
    b0: float,
    x_ref: float,
    prior_weight: float,
    half_life: float,
    z_scale: float | None,
    relative: bool,
    ops: list[tuple[object, ...]],
) -> None:
    """Any prior, with or without the second feature, relative or not, and any
    sequence of samples (finite or not), reads and predictions: every ``params3``,
    ``predict`` and the learned state are 242e426's to the last bit."""
    args = (a0, b0, x_ref, prior_weight, half_life, z_scale)
    new, ref = RobustLine(*args, relative=relative), _RefLine(*args, relative=relative)
    for op in ops:
        if op[0] == "observe":
            _, x, y, now, z = op
            new.observe(x, y, now, z)  # type: ignore[arg-type]
            ref.observe(x, y, now, z)  # type: ignore[arg-type]
        elif op[0] == "params3":
            assert _same(new.params3(op[1]), ref.params3(op[1]))  # type: ignore[arg-type]
        else:
            _, x, now, z = op
            assert _same(new.predict(x, now, z), ref.predict(x, now, z))  # type: ignore[arg-type]
        assert _same((new.y_hi, new.slope_hi, new._res), (ref.y_hi, ref.slope_hi, ref._res))
    assert _same(new.params3(60.0), ref.params3(60.0))


def test_the_prior_is_not_walked_per_read() -> None:
    """ORCH-2957: ``params3`` reads the prior's terms computed at construction, not the
    pseudo-points (fails on 242e426, whose loop walked ``_prior`` at every call)."""
    line = RobustLine(20.0, 0.1, 512.0, 4.0, 600.0, 512.0**2)
    line.observe(100.0, 30.0, 1.0, 10_000.0)
    want = line.params3(2.0)
    line._prior = None  # type: ignore[assignment]
    with pytest.raises(TypeError):
        _RefLine.params3(line, 2.0)
    assert line.params3(2.0) == want
