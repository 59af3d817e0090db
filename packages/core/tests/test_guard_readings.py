"""A held job's start read as the dispatcher reads the lane (ORCH-2970, ORCH-2971): at the
decision instant and at every slot that frees while the job is held, each slot's end at
the busy slots then; on runs 1725's and 1742's cases (seed 19, `--guard 1.5`, the
8-client phase's start), and with Hypothesis over arbitrary slots."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from llama_orch.core.eta import (
    Job,
    ReplicaLoad,
    simulate,
    simulate_running,
)
from llama_orch.core.guard import EDGE_SHARE, _tick, guard_hold, read_hold
from llama_orch.core.servicetime import Prior, ServiceModel

NOW = 1000.0


def _run_model(overhead: float, prefill: float, decode: float, slowdown: float) -> ServiceModel:
    """A replica's model at the parameters a run's DEBUG ``forecast`` line printed (its
    quadratic prefill and context terms left out: a few per cent of these prompts)."""
    return ServiceModel(
        Prior(overhead_ms=overhead, prefill_ms_per_token=prefill, decode_ms_per_token=decode,
              slowdown=slowdown),
        slots=4,
    )  # fmt: skip


def test_run_1725s_queue_behind_the_held_head_starts_when_the_task_beside_it_ends() -> None:
    """Run 2026-12-05-1725 at 15a9559c's 202 (log 734.340, run 207.779 s): A (942c4098,
    109-token prompt, told 2,818 ms at one busy slot, limit 1.5x that, 4,122 ms away) read
    at 4,091 ms left at two busy slots, B (adc07f3a, 7 tokens) 1,221 ms, limit 2,073 ms
    away; queued, the held head C (6825adea, 134 tokens, 43 expected, told held, limit
    5,710 ms away); the job, 89 tokens. c3b55ed told the job A's end (4,091 ms; it waited
    933 ms): the head starts when B ends, A read then at one busy slot is outside its band
    (ORCH-2970), and the job starts with it, A read at the head's two busy slots being
    past its limit (not protected, ORCH-2931), as the dispatcher released them."""
    model = _run_model(154.3, 6.3175, 16.448, 0.749)
    load = ReplicaLoad(model, 4, [4091.0, 1221.0], limits_ms=[4122.0, 2073.0], guard=1.5)
    head = Job(134, 43, 5710.0, True)
    out = simulate([load], [head, Job(89, 9)], NOW)
    assert out is not None
    assert [s.start_ms for s in out] == [1221.0, 1221.0]
    # A's finish (ORCH-2906) goes on from the readings: at B's end at one busy slot, then
    # pushed by the head's prefill, read at the head's two busy slots at the job's start,
    # then pushed by the job's prefill (c3b55ed: 4,091 ms, nothing starting before it)
    ran = simulate_running([load], [head, Job(89, 9)], NOW)
    assert ran is not None
    p = model.params(NOW)
    g2 = 1.0 + p.slowdown
    a = 1221.0 + (4091.0 - 1221.0) / g2 + p.prefill_ms(134)
    a = 1221.0 + (a - 1221.0) * g2 + p.prefill_ms(89)
    assert math.isclose(ran[1][0][0], a, rel_tol=1e-12)


def test_run_1742s_queue_behind_the_held_head_starts_when_the_task_beside_it_ends() -> None:
    """Run 2026-12-05-1742 at 09e0b64a's 202 (log 683.581, run 162.067 s): A (a686e164,
    told 2,165 ms, limit 3,136 ms away) read at 3,298 ms, already past its limit and
    inside the held head's band only by ORCH-2937's margin; B (e075ebdd) 928 ms, limit
    1,477 ms away; the head C (017abdbd, 134 tokens, 43, told held, limit 4,314 ms away);
    the job, 89 tokens. c3b55ed told it A's end (3,298 ms; it waited 978 ms)."""
    model = _run_model(22.0, 4.95, 13.4, 0.83)
    load = ReplicaLoad(model, 4, [3298.0, 928.0], limits_ms=[3136.0, 1477.0], guard=1.5)
    out = simulate([load], [Job(134, 43, 4314.0, True), Job(89, 9)], NOW)
    assert out is not None
    assert [s.start_ms for s in out] == [928.0, 928.0]
    # with no slowdown to read, the plain rule: the head held to A's end (c3b55ed's told)
    flat = ReplicaLoad(_run_model(22.0, 4.95, 13.4, 0.0), 4, [3298.0, 928.0],
                       limits_ms=[3136.0, 1477.0], guard=1.5)  # fmt: skip
    plain = simulate([flat], [Job(134, 43, 4314.0, True), Job(89, 9)], NOW)
    assert plain is not None and plain[0].start_ms == 3298.0


_slot = st.tuples(
    st.floats(0.0, 5000.0, allow_nan=False),
    st.one_of(st.just(math.inf), st.floats(0.0, 5000.0, allow_nan=False)),
    st.integers(1, 6),
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(_slot, max_size=6),
    st.floats(0.0, 3000.0),
    st.floats(0.0, 5000.0, allow_nan=False),
    st.sampled_from([None, True, False]),
    st.sampled_from([0.0, 0.1, 0.5, 0.9, 2.0]),
)
def test_a_read_start_is_a_wakeup_at_which_no_slot_read_then_is_inside_the_band(
    slots: list[tuple[float, float, int]], prefill: float, t: float, told: bool | None, s: float
) -> None:
    """ORCH-2970, ORCH-2971: the start is ``t`` when the plain rule does not hold the job
    (no reading), else ``t`` or the read end of a slot (a wakeup); at it no slot still
    holding work, read then, is inside the band; with ``s = 0`` it is the plain rule's."""
    start, chain = read_hold(slots, prefill, t, told, s)
    plain = guard_hold([(e, lim) for e, lim, _ in slots], prefill, t, told)
    if _tick(plain) <= _tick(t):
        assert (start, chain) == (t, [])
        return
    assert start >= t and chain[0][0] == t and chain[-1][0] == start
    if s == 0.0:
        assert start == plain
    m = 0.0 if told is None else (EDGE_SHARE if told else -EDGE_SHARE) * prefill
    tt = _tick(t)
    live = [(e, lim, b) for e, lim, b in slots if _tick(e) > tt]
    read: list[tuple[float, float]] = []
    for e, lim, b in live:  # the reading at the start, step by step from ``t``
        b0 = b
        for c, bc in chain:
            if _tick(e) <= _tick(c):
                break
            e = c + (e - c) * (1.0 + s * (bc - 1)) / (1.0 + s * (b0 - 1))
            b0 = bc
        read.append((e, lim))
    assert all(bc == sum(1 for e, _ in read if _tick(e) > _tick(c)) for c, bc in chain[1:])
    for e, lim in read:
        if _tick(e) > _tick(start):
            assert not (_tick(e - m) <= _tick(lim) < _tick(e + prefill + m)), (e, lim, start)
    if start > t:
        assert any(math.isclose(e, start, abs_tol=1e-6) for e, _ in read)
