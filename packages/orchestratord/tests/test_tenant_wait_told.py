"""A ``max_concurrent`` refusal reads the waiting loop's last pass instead of running
one (ORCH-1129): one refusal cost up to 213 ms of pass with 5,000 tasks queued."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
from llama_orch.orchestratord import waiting
from llama_orch.orchestratord.forecast_pass import TOLD_ENDS_MAX_AGE_S, TOLD_ENDS_MIN_PASS_S
from llama_orch.orchestratord.workload import Workload

from .test_tenant_wait import NOW, _pool, _rec, _running, _wait


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_orch.orchestratord.forecast_pass as fp

    monkeypatch.setattr(fp.time, "monotonic", lambda: NOW)


def _busy(guard: float | None, queued: int = 1000) -> tuple[Workload, Any]:
    """Two replicas of 4 slots decoding 8 tasks; ``queued`` tasks of alpha and beta (a
    pass over 1,000 takes several ms: ORCH-1129's record is read),
    gamma's last (the pass steps the whole queue to reach it), all admitted 1 s ago."""
    w = Workload(guards=None if guard is None else {"p": guard})
    pool = _pool(w, slots=4, replicas=2)
    rids = list(pool.replicas)
    for n in range(8):
        r = _running(w, f"r{n}", "alpha" if n % 3 else "gamma", 200, 40 + n, rids[n % 2], 50)
        r.created = NOW - 2.0  # (the record's default clock is not the patched one)
    for n in range(queued):
        q = _rec(f"q{n}", "beta" if n % 2 else "alpha", 60 + n % 50, 30)
        q.created = NOW - 1.0
        pool.queue.append(q)
    g = _rec("g", "gamma", 80, 30)
    g.created = NOW - 1.0
    pool.queue.append(g)
    return w, pool


def _tick(w: Workload, pool: Any, at: float) -> None:
    waiting.tick(SimpleNamespace(workload=w), pool, at, None)  # type: ignore[arg-type]


def _counting(w: Workload, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = w.forecast_pass

    def counted(pool: Any, now: float) -> Any:
        calls.append(1)
        return real(pool, now)

    monkeypatch.setattr(w, "forecast_pass", counted)
    return calls


@pytest.mark.parametrize("guard", [None, 1.5])
def test_a_refusal_reads_the_loops_last_pass_and_runs_none(
    guard: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-1129: the loop's pass at this instant covers gamma's tasks: the refusal
    tells what a fresh pass tells (ORCH-1125), without running one."""
    w, pool = _busy(guard)
    fresh = _wait(w, {"p": pool}, "gamma", pool)  # no record yet: the pass of ORCH-1127
    _tick(w, pool, NOW)
    assert pool.told_ends is not None and pool.told_ends.at == NOW
    assert pool.told_ends.cost_s > TOLD_ENDS_MIN_PASS_S  # 1,000 queued: a costly pass
    calls = _counting(w, monkeypatch)
    assert _wait(w, {"p": pool}, "gamma", pool) == fresh
    assert calls == []
    assert fresh > 1_000  # a running task of gamma, not the 100 ms floor


def test_the_record_is_moved_by_the_time_since_its_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORCH-1129: a pass 0.3 s old tells its earliest end 300 ms nearer."""
    w, pool = _busy(1.5)
    _tick(w, pool, NOW - 0.3)
    told = pool.told_ends
    assert told is not None
    calls = _counting(w, monkeypatch)
    got = _wait(w, {"p": pool}, "gamma", pool)
    assert calls == []
    assert got == max(100, math.ceil((told.ends["gamma"] - NOW) * 1000.0))
    assert got == math.ceil((told.ends["gamma"] - told.at) * 1000.0 - 300.0) or got == 100


@pytest.mark.parametrize("case", ["old", "admitted_after", "unready", "none", "cheap"])
def test_the_pass_runs_where_the_record_does_not_cover_the_tenant(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-1129: a pass older than two ticks, a task of gamma admitted after it, a
    tick without a forecast (no Ready replica), no tick at all, or a pass that took
    under 1 ms: the refusal runs the pass of ORCH-1127 and tells what it tells."""
    w, pool = _busy(None)
    at = NOW - TOLD_ENDS_MAX_AGE_S - 0.01 if case == "old" else NOW
    if case == "unready":
        waiting.tick(SimpleNamespace(workload=w), pool, at, NOW - 5.0)  # type: ignore[arg-type]
        assert pool.told_ends is None
    elif case != "none":
        _tick(w, pool, at)
    if case == "cheap":
        assert pool.told_ends is not None
        pool.told_ends.cost_s = TOLD_ENDS_MIN_PASS_S / 2
    if case == "admitted_after":
        late = _rec("late", "gamma", 5, 5)
        late.created = NOW + 0.001
        pool.queue.insert(0, late)
    calls = _counting(w, monkeypatch)
    got = _wait(w, {"p": pool}, "gamma", pool)
    assert calls == [1]
    pool.told_ends = None
    assert got == _wait(w, {"p": pool}, "gamma", pool)
