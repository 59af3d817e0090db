#!/usr/bin/env python3
"""The cost of the memory store's ``preempt`` with N running tasks (issue #13, ORCH-2597).

``MemoryStateStore.preempt`` (ORCH-2597, ``state: {backend: memory}`` under
``placement: hard``) reads every task record it holds (running, queued, and ended ones
still in their retention) for each call; under ``hard`` every empty dispatch makes the
call while the head has no victim recorded. This bench times it in-process (the event
loop is blocked for that time): N runs of one owner on one replica, plus ``--ended``
ended tasks still retained, and one queued interactive head; rows as
``bench/preempt_scan.py``'s (no eligible run, a victim chosen each call).

    uv run python bench/preempt_memory.py [--sizes 100,1000,10000] [--ended 0] [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from llama_orch.core.state_memory import MemoryStateStore
from llama_orch.core.state_store import (
    Dispatched,
    Event,
    PoolPolicy,
    SlotView,
    StoreConfig,
    TaskSpec,
)
from small_report import emit

LEASE_MS = 3_600_000


async def _time(call: Callable[[], Awaitable[Any]], n: int) -> dict[str, float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        lat.append((time.perf_counter() - t0) * 1e6)
    lat.sort()
    return {"p50_us": statistics.median(lat), "p99_us": lat[int(len(lat) * 0.99) - 1]}


async def _size(n: int, ended: int, calls: int) -> dict[str, dict[str, float]]:
    now = [1000.0]
    store = MemoryStateStore(clock=lambda: now[0])
    await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=n + ended + 10)}))
    slots = n + ended + 10
    await store.set_replicas("p", [SlotView(replica_id="r1", set_key="A", ready=True, slots=slots)])
    await store.heartbeat("i1", LEASE_MS)
    for i in range(ended):
        spec = TaskSpec(task_id=f"end{i:06d}", pool="p", priority="batch")
        _, d = await store.submit_dispatch(spec, "i1", LEASE_MS)
        assert isinstance(d, Dispatched)
        await store.append(spec.task_id, d.epoch, [Event("end", b"{}")])
    for i in range(n):
        spec = TaskSpec(task_id=f"run{i:06d}", pool="p", priority="batch")
        _, d = await store.submit_dispatch(spec, "i1", LEASE_MS)
        assert isinstance(d, Dispatched)
    await store.set_replicas("p", [SlotView(replica_id="r1", set_key="A", ready=True, slots=n)])
    await store.submit(TaskSpec(task_id="head", pool="p", priority="interactive"))
    assert await store.preempt("p", "i2", ["elsewhere"], LEASE_MS) is None

    async def victim() -> None:
        now[0] += 1.0  # past the previous choice's ttl: a victim every call
        assert await store.preempt("p", "i1", ["r1"], 1) is not None

    return {
        "dispatch (baseline)": await _time(lambda: store.dispatch("p", "i2", LEASE_MS), calls),
        "preempt, no victim": await _time(
            lambda: store.preempt("p", "i2", ["elsewhere"], LEASE_MS), calls
        ),
        "preempt, victim": await _time(victim, calls),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--ended", type=int, default=0)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = {n: await _size(n, args.ended, args.calls) for n in map(int, args.sizes.split(","))}
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"# The memory store's `preempt` with N running tasks ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`uv run python bench/preempt_memory.py --sizes {args.sizes} --ended {args.ended} "
        f"--calls {args.calls}`: cores {os.cpu_count()}, load average {load0} at the start "
        f"and {load1} at the end.",
        "",
        "| N running | call | p50 µs/call | p99 µs/call |",
        "|---|---|---|---|",
    ]
    for n, row in rows.items():
        for name, m in row.items():
            lines.append(f"| {n} | {name} | {m['p50_us']:.1f} | {m['p99_us']:.1f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    asyncio.run(main())
