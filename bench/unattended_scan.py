#!/usr/bin/env python3
"""The cost of ``llorch_unattended`` with N queued tasks (issue #13, ORCH-2603, ORCH-2604).

``unattended(pool)`` is called by every instance once per ``lease_ms`` per pool (and at
its start, and when an instance leaves the live list, ORCH-2604). This bench measures,
on the project's embedded valkey-server, with N tasks queued in each of two pools (no
replica, so nothing is dispatched):

* **none listed**: pool ``p``, every task admitted by a live instance: the call reads
  every queued task's admitter and lists nothing (the usual case);
* **all listed**: pool ``g``, every task admitted by an instance that never sent a
  heartbeat: the call lists all N (after an instance is gone).

Server time per call is Valkey's own (``cmdstat_fcall`` ``usec_per_call``); the client
time is the round trip through the store's pipelined connection (the answer's size
included). Measured as ``bench/preempt_scan.py`` does.

    uv run python bench/unattended_scan.py [--sizes 100,1000,10000] [--calls 100] [--out ...md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import valkey.asyncio as valkey
from llama_orch.core.config import StateOptions
from llama_orch.core.state_store import PoolPolicy, StoreConfig, TaskSpec, load_state_store_class
from llama_orch.testing_engines.valkey import valkey_server
from preempt_scan import Row, measure

LEASE_MS = 3_600_000


async def _size(url: str, n: int, calls: int) -> dict[str, Row]:
    opts = StateOptions(backend="valkey", url=url, key_prefix=f"us{n}-{os.getpid()}")
    store = load_state_store_class("valkey").from_options(opts)
    await store.start()
    raw = valkey.Valkey.from_url(url)
    try:
        pools = {"p": PoolPolicy(capacity=n + 10), "g": PoolPolicy(capacity=n + 10)}
        await store.configure(StoreConfig(pools=pools))
        await store.heartbeat("live", LEASE_MS)
        for pool, admitter in (("p", "live"), ("g", "gone")):
            for lo in range(0, n, 200):  # 200 calls in flight
                await asyncio.gather(
                    *(
                        store.submit(
                            TaskSpec(task_id=f"{pool}{i:06d}", pool=pool, priority="batch"),
                            admitter,
                        )
                        for i in range(lo, min(n, lo + 200))
                    )
                )
        assert await store.unattended("p") == []
        assert len(await store.unattended("g")) == n
        return {
            "none listed": await measure(raw, lambda: store.unattended("p"), calls, 0),
            "all listed": await measure(raw, lambda: store.unattended("g"), calls, 0),
        }
    finally:
        await raw.flushall()
        await raw.aclose()
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows: dict[int, dict[str, Row]] = {}
    with tempfile.TemporaryDirectory() as tmp, valkey_server(Path(tmp)) as url:
        for n in (int(s) for s in args.sizes.split(",")):
            rows[n] = await _size(url, n, args.calls)
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"# `llorch_unattended` with N queued tasks ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`uv run python bench/unattended_scan.py --sizes {args.sizes} --calls {args.calls}`: "
        f"cores {os.cpu_count()}, load average {load0} at the start and {load1} at the end.",
        "",
        "| N queued | call | server µs/call | client p50 ms | client p99 ms |",
        "|---|---|---|---|---|",
    ]
    for n, row in rows.items():
        for name, m in row.items():
            lines.append(
                f"| {n} | {name} | {m['server_us']:.1f} | {m['client_p50_ms']:.3f} "
                f"| {m['client_p99_ms']:.3f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
