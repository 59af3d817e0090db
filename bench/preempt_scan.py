#!/usr/bin/env python3
"""The cost of ``llorch_preempt`` with N running tasks (issue #13, ORCH-2597, ORCH-2606,
ORCH-2608).

``preempt`` is called on each dispatch that placed nothing under
``scheduling.preemption: hard`` while no victim is recorded for the head. This bench
measures, on the project's embedded valkey-server, for N running tasks of one pool
(all batch, owned by one instance, one replica with N slots) and one queued
interactive head:

* **no victim**: the caller names a replica no run is on, so the call finds nothing
  and records nothing: every call scans again (the worst case: a blocked head with no
  eligible run, each empty dispatch of each instance);
* **victim**: the caller owns the runs and names their replica; the record lives 1 ms
  (``ttl_ms=1``) and the calls are 2 ms apart, so every call chooses again;
* **other's victim**: another (live) instance owns the runs and the caller names their
  replica: the caller has no run of its own, so the newest of the live owner's is
  chosen (and its owner told), every call again as above;
* **dispatch (baseline)**: the empty dispatch that comes before it (one
  ``llorch_dispatch`` that places nothing), for scale.

Server time per call is Valkey's own (``INFO commandstats``, ``cmdstat_fcall``
``usec_per_call``, reset before each measure); the client time is the round trip
through the store's pipelined connection.

``--before <checkout>``: the same keyspace is measured with that checkout's
``llorch.lua`` too (``FUNCTION LOAD REPLACE`` in turn, this tree's library set the runs
up so its index exists; the older library ignores it), the sides in the order before,
after, after, before at each N (two measures per side).

    uv run python bench/preempt_scan.py [--sizes 100,1000,10000] [--calls 200]
        [--before /path/to/checkout] [--out ...md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import valkey.asyncio as valkey
from llama_orch.core.config import StateOptions
from llama_orch.core.state_store import (
    Dispatched,
    PoolPolicy,
    SlotView,
    StateStore,
    StoreConfig,
    TaskSpec,
    load_state_store_class,
)
from llama_orch.state_valkey._store import LIBRARY
from llama_orch.testing_engines.valkey import valkey_server
from small_report import emit

LEASE_MS = 3_600_000  # the runs hold their slots for the whole bench
LUA = "packages/state-valkey/src/llama_orch/state_valkey/llorch.lua"
Row = dict[str, float]


async def _server_us(raw: valkey.Valkey) -> tuple[float, int]:
    stats = await raw.info("commandstats")
    f = stats.get("cmdstat_fcall", {})
    return float(f.get("usec_per_call", 0.0)), int(f.get("calls", 0))


async def measure(
    raw: valkey.Valkey, call: Callable[[], Awaitable[Any]], n: int, gap_s: float
) -> dict[str, float]:
    await raw.config_resetstat()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        lat.append((time.perf_counter() - t0) * 1000)
        if gap_s:
            await asyncio.sleep(gap_s)
    us, calls = await _server_us(raw)
    lat.sort()
    return {
        "server_us": us,
        "calls": calls,
        "client_p50_ms": statistics.median(lat),
        "client_p99_ms": lat[int(len(lat) * 0.99) - 1],
    }


async def _rows(store: StateStore, raw: valkey.Valkey, calls: int) -> dict[str, Row]:
    return {
        "dispatch (baseline)": await measure(
            raw, lambda: store.dispatch("p", "i2", LEASE_MS), calls, 0
        ),
        "preempt, no victim": await measure(
            raw, lambda: store.preempt("p", "i2", ["elsewhere"], LEASE_MS), calls, 0
        ),
        "preempt, victim": await measure(
            raw, lambda: store.preempt("p", "i1", ["r1"], 1), calls, 0.002
        ),
        "preempt, other's victim": await measure(
            raw, lambda: store.preempt("p", "i2", ["r1"], 1), calls, 0.002
        ),
    }


async def _size(
    url: str, n: int, calls: int, sides: list[tuple[str, str]]
) -> list[tuple[str, dict[str, Row]]]:
    opts = StateOptions(backend="valkey", url=url, key_prefix=f"ps{n}-{os.getpid()}")
    store = load_state_store_class("valkey").from_options(opts)
    await store.start()
    raw = valkey.Valkey.from_url(url)
    try:
        await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=n + 10)}))
        await store.set_replicas("p", [SlotView(replica_id="r1", set_key="A", ready=True, slots=n)])
        await store.heartbeat("i1", LEASE_MS)
        newest = (-1, "")
        for lo in range(0, n, 200):  # N runs of i1, 200 calls in flight
            steps = await asyncio.gather(
                *(
                    store.submit_dispatch(
                        TaskSpec(task_id=f"run{i:06d}", pool="p", priority="batch"), "i1", LEASE_MS
                    )
                    for i in range(lo, min(n, lo + 200))
                )
            )
            for _, d in steps:
                assert isinstance(d, Dispatched)
                newest = max(newest, (d.epoch, d.task.task_id))
        await store.submit(TaskSpec(task_id="head", pool="p", priority="interactive"))
        assert (await store.head("p")) is not None
        out = []
        for side, library in sides:
            await raw.function_load(library, replace=True)
            assert await store.preempt("p", "i2", ["elsewhere"], LEASE_MS) is None
            await asyncio.sleep(0.01)
            got = await store.preempt("p", "i2", ["r1"], 1)
            assert got is not None and got.task_id == newest[1], (side, got, newest)
            out.append((side, await _rows(store, raw, calls)))
        return out
    finally:
        await raw.flushall()
        await raw.aclose()
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    sides = [("after", LIBRARY)]
    if args.before is not None:
        before = (args.before / LUA).read_text(encoding="utf-8")
        sides = [("before", before), ("after", LIBRARY), ("after", LIBRARY), ("before", before)]
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows: dict[int, list[tuple[str, dict[str, Row]]]] = {}
    with tempfile.TemporaryDirectory() as tmp, valkey_server(Path(tmp)) as url:
        for n in (int(s) for s in args.sizes.split(",")):
            rows[n] = await _size(url, n, args.calls, sides)
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"# `llorch_preempt` with N running tasks ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`uv run python bench/preempt_scan.py --sizes {args.sizes} --calls {args.calls}"
        + (f" --before {args.before}`" if args.before else "`")
        + f": cores {os.cpu_count()}, load average {load0} at the start and {load1} at the end.",
        "",
        "| N running | side | call | server µs/call | client p50 ms | client p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for n, measured in rows.items():
        for side, row in measured:
            for name, m in row.items():
                lines.append(
                    f"| {n} | {side} | {name} | {m['server_us']:.1f} "
                    f"| {m['client_p50_ms']:.3f} | {m['client_p99_ms']:.3f} |"
                )
    emit(lines, args.out)


if __name__ == "__main__":
    asyncio.run(main())
