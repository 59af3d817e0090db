#!/usr/bin/env python3
"""Benchmark of the orchestrator-core admission queue (issue #4 acceptance, ORCH-1710).

For 1e3, 1e4 and 1e5 queued tasks (2 priorities x 16 tenants, 1 in 8 with a
deadline) it prints steady-state enqueue+dispatch pairs per second (one
``push`` plus one ``pop``, the queue staying at its size) and the bytes per
queued task measured with tracemalloc (queue bookkeeping only, not the task
objects themselves). Goals: >= 100k pairs/s at 1e5, per-pair cost at 1e5
<= 2x that at 1e3, <= 2 KB per queued task.

It also prints what an admission pays for the new task's ``queue_position``
with that mixed backlog: ``position`` (computed per flow and band) side by side
with the serving-order simulation it replaced (``list(q).index``), and their ratio.

    uv run python bench/core_scheduler.py
"""

from __future__ import annotations

import gc
import itertools
import time
import tracemalloc

from llama_orch.core.queue import AdmissionQueue

PRIOS = ("interactive", "batch")
TENANTS = tuple(f"t{n}" for n in range(16))


def _args(n: int) -> tuple[str, str, float | None]:
    return PRIOS[n % 2], TENANTS[n % 16], (float(n) if n % 8 == 0 else None)


def fill(size: int) -> AdmissionQueue[int]:
    q: AdmissionQueue[int] = AdmissionQueue(size + 1, tenant_weights={"t0": 3})
    for n in range(size):
        prio, tenant, deadline = _args(n)
        q.push(n, prio, tenant=tenant, deadline=deadline)
    return q


def bytes_per_task(size: int) -> float:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    q = fill(size)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del q
    return used / size


def pairs_per_s(size: int, pairs: int = 200_000) -> float:
    q = fill(size)
    push, pop = q.push, q.pop
    args = [_args(n) for n in range(size, size + pairs)]
    gc.disable()
    t0 = time.perf_counter()
    for n, (prio, tenant, deadline) in enumerate(args, size):
        push(n, prio, tenant=tenant, deadline=deadline)
        pop()
    dt = time.perf_counter() - t0
    gc.enable()
    return pairs / dt


def position_us(size: int, simulated: bool, reps: int = 20) -> float:
    """Microseconds for the position of a newly pushed task (then removed again)."""
    q = fill(size)
    best = float("inf")
    for n in range(size, size + reps):
        prio, tenant, _ = _args(n)
        q.push(n, prio, tenant=tenant)
        t0 = time.perf_counter()
        pos = list(q).index(n) if simulated else q.position(n)
        best = min(best, time.perf_counter() - t0)
        assert pos == q.position(n)
        q.remove(n)
    return best * 1e6


def head_us(size: int, k: int = 256, reps: int = 5) -> float:
    """Microseconds for the first ``k`` tasks in serving order (an admission forecast)."""
    q = fill(size)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        head = list(itertools.islice(q, k))
        best = min(best, time.perf_counter() - t0)
    assert len(head) == min(k, size)
    return best * 1e6


def main() -> None:
    results = {}
    print(f"{'queued':>8} {'pairs/s':>12} {'us/pair':>9} {'bytes/task':>11}")
    for size in (1_000, 10_000, 100_000):
        rate = max(pairs_per_s(size) for _ in range(3))
        results[size] = rate
        print(f"{size:>8} {rate:>12,.0f} {1e6 / rate:>9.2f} {bytes_per_task(size):>11.0f}")
    ratio = results[1_000] / results[100_000]
    print(f"per-pair cost at 1e5 / at 1e3: {ratio:.2f}x")
    print(f"\n{'queued':>8} {'position us':>12} {'simulated us':>13} {'speedup':>8}")
    for size in (1_000, 10_000):
        comp, sim = position_us(size, False), position_us(size, True, reps=5)
        print(f"{size:>8} {comp:>12.1f} {sim:>13.1f} {sim / comp:>7.0f}x")
    for size in (1_000, 10_000):
        print(f"first 256 in serving order with {size} queued: {head_us(size):.0f} us")


if __name__ == "__main__":
    main()
