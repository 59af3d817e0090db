"""A tenant refused by its ``max_concurrent`` is told when one of its own tasks in flight
ends (ORCH-1125..1127), not when the pool's next slot frees (ORCH-1957): session 22's
CI-profile histories read such refusals off by 0.95 s at the median, up to 7.9 s."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import pytest
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.api import EndEvent
from llama_orch.core.eta import Slot
from llama_orch.core.replica import ReplicaState
from llama_orch.core.servicetime import Prior
from llama_orch.orchestratord.forecast_pass import ForecastPass, tenant_end_ms, tenant_wait_ms
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.orchestratord.workload import Workload

ENGINE = "llamacpp-http"
NOW = 1000.0


class _Queue(list[TaskRecord]):
    capacity = 100

    def position(self, rec: TaskRecord) -> int:
        return self.index(rec) if rec in self else -1


def _pool(w: Workload, slots: int = 2, replicas: int = 1, pid: str = "p") -> Any:
    """``replicas`` Ready replicas of ``slots`` slots: 100 ms + 5 ms a prompt token to
    the first token, 20 ms a token after it, no slowdown."""
    w._priors[ENGINE] = Prior(
        overhead_ms=100.0, prefill_ms_per_token=5.0, decode_ms_per_token=20.0, slowdown=0.0
    )
    reps = {}
    for i in range(replicas):
        rid = f"{pid}-e{i}"
        state = ReplicaState(
            pool_id=pid, replica_id=rid, engine=ENGINE, status="ready", slots=slots
        )
        reps[rid] = SimpleNamespace(state=state)
    pool = SimpleNamespace(id=pid, engine=ENGINE, replicas=reps, queue=_Queue(), told_ends=None)
    for rid in reps:
        w.model(pool, rid, slots)
    return pool


def _rec(tid: str, tenant: str, max_tokens: int, tokens_in: int = 10, pid: str = "p") -> TaskRecord:
    req = GenerateRequest(task_id=tid, prompt="x", max_tokens=max_tokens, seed=1)
    return TaskRecord(tid, pid, ENGINE, "interactive", req, tokens_in, tenant=tenant)


def _running(
    w: Workload,
    tid: str,
    tenant: str,
    max_tokens: int,
    so_far: int,
    rid: str = "p-e0",
    tokens_in: int = 10,
) -> TaskRecord:
    """A task decoding on ``rid`` at 20 ms a token, ``so_far`` tokens generated (none:
    prefilling its prompt)."""
    pid = rid.rsplit("-", 1)[0]
    r = _rec(tid, tenant, max_tokens, tokens_in, pid=pid)
    r.dispatch(rid)
    r.dispatched = NOW - 0.1 - max(0, so_far - 1) * 0.02
    w.started(pid, rid, r)
    if so_far:
        r.run_first_token = r.dispatched + 0.1
        r.last_token = NOW  # its tokens at 20 ms each since the first
        r.engine_tokens = so_far
        r.busy_sum, r.run_chunks = so_far, so_far
    return r


def _told(w: Workload, pool: Any, tenant: str) -> float:
    """The earliest end of ``tenant``'s tasks from the waiting loop's whole pass: the
    finishes its running tasks' ``metrics`` and its queued tasks' ``queued`` events tell."""
    ends: list[float] = []

    def each(t: TaskRecord, _pos: int, s: Slot) -> None:
        if t.tenant == tenant:
            ends.append(s.finish_ms)

    running = w.forecasts(pool, NOW, each)
    assert running is not None
    ends += [ms for t, ms in running if t.tenant == tenant]
    return min(ends, default=math.inf)


def _wait(w: Workload, pools: dict[str, Any], tenant: str, refusing: Any) -> int:
    mine = [t for p in pools.values() for t in p.queue if t.tenant == tenant]
    mine += [t for tasks in w.running.values() for t in tasks if t.tenant == tenant]
    return tenant_wait_ms(w, pools, mine, tenant, refusing)


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_orch.orchestratord.forecast_pass as fp
    import llama_orch.orchestratord.workload as wl

    monkeypatch.setattr(fp.time, "monotonic", lambda: NOW)
    assert wl.time is fp.time  # one clock for the pass and the pool's rule


def test_a_tenant_at_its_cap_on_an_idle_pool_is_told_when_its_long_task_ends() -> None:
    """ORCH-1125: gamma runs one 400-token task (10 done) on a 2-slot replica, the
    other slot idle: the pool would admit at once (ORCH-1957: 100 ms), gamma only when
    its task ends, 390 tokens at 20 ms later."""
    w = Workload()
    pool = _pool(w)
    _running(w, "g1", "gamma", 400, 10)
    assert w.retry_after_ms(pool) == 100  # what the refusal was told before
    got = _wait(w, {"p": pool}, "gamma", pool)
    assert got == math.ceil(_told(w, pool, "gamma"))
    assert got == pytest.approx(390 * 20.0, abs=1)


def test_the_task_ending_first_is_the_one_told() -> None:
    """ORCH-1125: a second task of the tenant, 30 tokens from its end, on another
    replica, and another tenant's shorter task: the tenant is told its own 30 tokens."""
    w = Workload()
    pool = _pool(w, slots=2, replicas=2)
    _running(w, "g1", "gamma", 400, 10, "p-e0")
    _running(w, "g2", "gamma", 100, 70, "p-e1")
    _running(w, "a1", "alpha", 20, 15, "p-e1")  # ends sooner, not gamma's
    running = w.forecasts(pool, NOW, lambda *a: None)
    assert running is not None
    told = {t.task_id: ms for t, ms in running}
    assert told["a1"] < told["g2"] < told["g1"]
    assert told["g2"] == pytest.approx(30 * 20.0, rel=0.1)  # its 30 tokens (live pace)
    assert _wait(w, {"p": pool}, "gamma", pool) == math.ceil(told["g2"])


def test_a_short_queued_task_can_end_first() -> None:
    """ORCH-1125: queued tasks count. One slot, alpha's 50 tokens left running, then
    gamma's 5-token task queued (100 ms + 5 x 10 ms prefill + 4 x 20 ms after it starts),
    while gamma's other task runs 2,000 tokens on another replica."""
    w = Workload()
    pool = _pool(w, slots=1, replicas=2)
    _running(w, "a1", "alpha", 60, 10, "p-e0")
    _running(w, "g1", "gamma", 2010, 10, "p-e1")
    q = _rec("gq", "gamma", 5)
    pool.queue.append(q)
    got = _wait(w, {"p": pool}, "gamma", pool)
    assert got == math.ceil(_told(w, pool, "gamma"))
    assert got == pytest.approx(50 * 20.0 + 100.0 + 50.0 + 4 * 20.0, abs=1)


def test_every_pool_of_the_tenant_counts() -> None:
    """ORCH-1126: refused on pool p, where its task runs long; its task on pool q ends
    first."""
    w = Workload()
    p, q = _pool(w, pid="p"), _pool(w, pid="q")
    _running(w, "g1", "gamma", 400, 10, "p-e0")
    _running(w, "g2", "gamma", 60, 20, "q-e0")
    assert _wait(w, {"p": p, "q": q}, "gamma", p) == pytest.approx(40 * 20.0, abs=1)


def test_no_forecast_falls_back_to_the_pool_rule() -> None:
    """ORCH-1126: its only task's pool has no Ready replica: the refusing pool's delay."""
    w = Workload()
    p, q = _pool(w, pid="p"), _pool(w, pid="q")
    q.replicas["q-e0"].state = ReplicaState(
        pool_id="q", replica_id="q-e0", engine=ENGINE, status="unready", slots=2
    )
    _running(w, "a1", "alpha", 400, 10, "p-e0")
    _running(w, "a2", "alpha", 400, 10, "p-e0")  # p is full: its next slot in 390 x 20 ms
    g = _rec("g1", "gamma", 50, pid="q")
    q.queue.append(g)
    got = tenant_wait_ms(w, {"p": p, "q": q}, [g], "gamma", p)
    assert got == w.retry_after_ms(p) == pytest.approx(390 * 20.0, abs=1)


def test_the_floor_is_100_ms() -> None:
    """ORCH-1125: a task one token from its end is told 100 ms, as ORCH-1957's floor."""
    w = Workload()
    pool = _pool(w)
    _running(w, "g1", "gamma", 400, 399)
    assert _told(w, pool, "gamma") == pytest.approx(20.0)
    assert _wait(w, {"p": pool}, "gamma", pool) == 100


def _learn_cancels(w: Workload, pool: Any) -> None:
    """Ten runs of 100 tokens, every other one canceled after 20: the queued tasks'
    starts are then forecast with others' slots held by their share (ORCH-2922), a
    second simulation in the pass."""
    for n in range(10):
        r = _rec(f"old{n}", "x", 100)
        rid = next(iter(pool.replicas))
        r.dispatch(rid)
        r.dispatched = NOW - 100 + n
        w.started(pool.id, rid, r)
        tokens = 20 if n % 2 else 100
        r.run_first_token, r.last_token = r.dispatched + 0.1, r.dispatched + 0.1 + tokens * 0.02
        r.engine_tokens, r.busy_sum, r.run_chunks = tokens, tokens, tokens
        reason = "canceled" if n % 2 else "length"
        r.finish(EndEvent(tokens_out=tokens, decode_ms=0, reason=reason))  # type: ignore[arg-type]
        w.ended(pool.id, rid, r)
        w.observe(pool, pool.replicas[rid], r, r.last_token)


class _Counted(list[TaskRecord]):
    """The queue snapshot of a pass, counting the tasks the pass takes from it."""

    taken = 0

    def __iter__(self) -> Any:
        for t in super().__iter__():
            self.taken += 1
            yield t


def _tenant_end(w: Workload, pool: Any, tenant: str) -> tuple[float, int]:
    """:func:`tenant_end_ms` of a fresh pass and the queued tasks it stepped."""
    run = w.forecast_pass(pool, NOW)
    assert isinstance(run, ForecastPass)
    run.queued = counted = _Counted(run.queued)
    return tenant_end_ms(run, tenant), counted.taken


def test_the_pass_ends_at_the_first_task_starting_after_the_earliest_end() -> None:
    """ORCH-1127: gamma's task ends in 100 ms on one of 2 slots; 30 tasks of alpha are
    queued, the first on the idle slot at once, the second when gamma's slot frees: the
    pass steps those two and the third, the first to start after gamma's end."""
    w = Workload()
    pool = _pool(w)
    _running(w, "g1", "gamma", 100, 95)
    for n in range(30):
        pool.queue.append(_rec(f"a{n}", "alpha", 50))
    end, taken = _tenant_end(w, pool, "gamma")
    assert end == _told(w, pool, "gamma") == pytest.approx(5 * 20.0 + 5 * 10.0)
    assert taken == 3


def test_with_cancels_the_pass_goes_on_while_the_held_starts_are_earlier() -> None:
    """ORCH-1127 with two simulations (ORCH-2922: cancels learned): a queued task's
    start is forecast with others' slots held for their expected share, its finish told
    from that start. Two 1-slot replicas run alpha's task (300 tokens left) and gamma's
    (250 left, told 5 s); alpha's two 50-token tasks then gamma's 1-token task queue.
    At the told budgets the second alpha task starts after 5 s, with the shares at
    4.3 s: gamma's queued task, next, starts at 4.4 s and ends first, at 4.56 s."""
    w = Workload()
    pool = _pool(w, slots=1, replicas=2)
    _learn_cancels(w, pool)
    _running(w, "a1", "alpha", 310, 10, "p-e0")
    _running(w, "g1", "gamma", 260, 10, "p-e1")
    pool.queue.extend([_rec("q0", "alpha", 50), _rec("q1", "alpha", 50), _rec("g2", "gamma", 1)])
    end, taken = _tenant_end(w, pool, "gamma")
    assert end == _told(w, pool, "gamma") == pytest.approx(4560.0, abs=1)
    assert taken == 3


@pytest.mark.parametrize("guard", [None, 1.5])
@pytest.mark.parametrize("seed", range(60))
def test_the_early_end_of_the_pass_gives_the_whole_pass_minimum(
    seed: int, guard: float | None
) -> None:
    """ORCH-1127: random pools (1-3 replicas of 1-4 slots, up to 8 running and 40
    queued tasks of 3 tenants, prompts of 1-400 tokens so that queued prefills move
    running finishes, learned cancels in half of them, the dispatch guard on or off):
    the tenant's earliest end from the pass that stops early equals the minimum over
    the whole pass's told finishes; with the guard the pass steps the whole queue."""
    rng = random.Random(seed)
    w = Workload(guards=None if guard is None else {"p": guard})
    pool = _pool(w, slots=rng.randint(1, 4), replicas=rng.randint(1, 3))
    if seed % 2:
        _learn_cancels(w, pool)
    rids = list(pool.replicas)
    tenants = ("alpha", "beta", "gamma")
    for n in range(rng.randint(0, 8)):
        rid = rng.choice(rids)
        if len(w.running.get(("p", rid), ())) >= pool.replicas[rid].state.slots:
            continue
        budget = rng.randint(2, 300)
        so_far = rng.choice((0, rng.randint(1, budget - 1)))
        r = _running(w, f"r{n}", rng.choice(tenants), budget, so_far, rid, rng.randint(1, 400))
        if guard is not None and rng.random() < 0.7:
            r.finish_guard = NOW + rng.uniform(0.05, 8.0)
    for n in range(rng.randint(0, 40)):
        q = _rec(f"q{n}", rng.choice(tenants), rng.randint(1, 200), rng.randint(1, 400))
        if guard is not None and rng.random() < 0.5:
            q.finish_guard = NOW + rng.uniform(0.5, 20.0)
        pool.queue.append(q)
    for tenant in tenants:
        end, taken = _tenant_end(w, pool, tenant)
        assert end == _told(w, pool, tenant), (seed, tenant)
        if guard is not None:
            assert taken == len(pool.queue)
