"""The dispatch guard's hold rule and its readings, pure (ORCH-2931, ORCH-2933, ORCH-2937,
ORCH-2938, ORCH-2970).

A job may start when no slot still holding work would be pushed past a limit it keeps
by the job's prefill (:func:`guard_hold`); while the job is held, the dispatcher reads
the slots again at every wakeup at the busy slots then, and the forecasts read them the
same way (:func:`read_hold`). :mod:`llama_orch.core.eta` applies both to its lanes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["EDGE_SHARE", "guard_hold", "read_end", "read_hold"]


def _tick(ms: float) -> float:
    """A time at the resolution forecasts compare times at (1 ns): ties are ties."""
    return round(ms, 6)


EDGE_SHARE = 0.25  # of the job's prefill: the edge moved toward what it was told (ORCH-2937)


def guard_hold(
    slots: Iterable[tuple[float, float]], prefill_ms: float, t: float, told: bool | None = None
) -> float:
    """When a job whose prefill takes ``prefill_ms`` may start, at ``t`` at the
    earliest, under the dispatch guard (ORCH-2931, ORCH-2933): after every slot
    ``(end, limit)`` that still holds work at ``t`` and that its prefill would push
    past a limit it now keeps (``end <= limit < end + prefill_ms``); ``t`` if none.
    A slot already past its limit is not waited for: holding cannot keep it.
    ``told`` (ORCH-2937): the decision the job's 202 told it moves that edge by
    ``m = EDGE_SHARE x prefill_ms`` toward it, ``end - m <= limit < end + prefill_ms + m``
    for a job told held, ``end + m <= limit < end + prefill_ms - m`` for one told not."""
    m = 0.0 if told is None else (EDGE_SHARE if told else -EDGE_SHARE) * prefill_ms
    hold = t
    for end, limit in slots:
        # compared at ``_tick``'s resolution: a limit at a job's own forecast end (a
        # factor of 1) is kept whichever way the end's stored form rounds (ORCH-2938)
        lim = _tick(limit)
        if _tick(end) > _tick(hold) and _tick(end - m) <= lim < _tick(end + prefill_ms + m):
            hold = end
    return hold


def read_end(e: float, b0: int, chain: Sequence[tuple[float, int]], slowdown: float) -> float:
    """ORCH-2970: an end ``e`` forecast at ``b0`` busy slots, as read at each ``(c, b)`` of
    ``chain`` in turn (ascending ``c``, all before ``e``): its time left after ``c`` at
    ``b`` busy slots, ``c + (e - c) x (1 + s x (b - 1)) / (1 + s x (b' - 1))``, ``b'`` the
    busy slots of the reading before (``b0`` first)."""
    for c, b in chain:
        if _tick(e) <= _tick(c):  # it freed by then: read no further
            break
        k = (1.0 + slowdown * (b - 1)) / (1.0 + slowdown * (b0 - 1))
        if k != 1.0:  # a reading at the same busy slots (or no slowdown) is the end itself
            e = c + (e - c) * k
        b0 = b
    return e


def read_hold(
    slots: Sequence[tuple[float, float, int]],
    prefill_ms: float,
    t: float,
    told: bool | None,
    slowdown: float,
) -> tuple[float, list[tuple[float, int]]]:
    """ORCH-2970: when a job may start under the guard, at ``t`` at the earliest, reading
    the slots ``(end, limit, busy)`` (each end forecast at ``busy`` slots) as the
    dispatcher does at each wakeup: at ``t`` and at every slot's end while the job is
    held, each slot still holding work read at the busy slots then (:func:`read_end`), and
    judged by :func:`guard_hold` on that reading. ``(start, chain)``: the start and the
    ``(instant, busy slots)`` readings up to it, which give every later end (``read_end``)."""
    if _tick(guard_hold([(e, lim) for e, lim, _ in slots], prefill_ms, t, told)) <= _tick(t):
        return t, []  # not held as forecast: no reading (a guard that holds nothing, none)
    tt = _tick(t)
    live = [(e, lim, b) for e, lim, b in slots if _tick(e) > tt]
    chain = [(t, len(live))]
    while True:
        read = [(read_end(e, b, chain, slowdown), lim) for e, lim, b in live]
        if _tick(guard_hold(read, prefill_ms, t, told)) <= _tick(t):
            return t, chain
        t = min(e for e, _ in read)  # the next wakeup: the first slot that frees
        tt = _tick(t)
        live = [s for s, (e, _) in zip(live, read, strict=True) if _tick(e) > tt]
        chain.append((t, len(live)))
