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

With ``--before <checkout>`` the library of that checkout and this tree's are loaded in
turn (``FUNCTION LOAD REPLACE``), in the order before, after, after, before, each side
on its own key prefix filled under its own library (ORCH-2614).

    uv run python bench/unattended_scan.py [--sizes 100,1000,10000] [--calls 100]
        [--before <checkout>] [--out ...md]
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
from llama_orch.state_valkey._store import LIBRARY
from llama_orch.testing_engines.valkey import valkey_server
from preempt_scan import Row, measure
from small_report import emit

LEASE_MS = 3_600_000
LUA = "packages/state-valkey/src/llama_orch/state_valkey/llorch.lua"


async def _size(url: str, n: int, calls: int, library: str | None, tag: str) -> dict[str, Row]:
    opts = StateOptions(backend="valkey", url=url, key_prefix=f"us{n}{tag}-{os.getpid()}")
    store = load_state_store_class("valkey").from_options(opts)
    await store.start()  # loads this tree's library
    raw = valkey.Valkey.from_url(url)
    try:
        if library is not None:
            await raw.function_load(library, replace=True)
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
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sides: list[tuple[str, str | None]] = [("", None)]
    if args.before is not None:
        before = (args.before / LUA).read_text(encoding="utf-8")
        sides = [("before", before), ("after", LIBRARY), ("after", LIBRARY), ("before", before)]
    rows: dict[tuple[int, str], dict[str, list[Row]]] = {}
    with tempfile.TemporaryDirectory() as tmp, valkey_server(Path(tmp)) as url:
        for n in (int(s) for s in args.sizes.split(",")):
            for i, (side, lib) in enumerate(sides):
                for call, m in (await _size(url, n, args.calls, lib, f"{side}{i}")).items():
                    rows.setdefault((n, side), {}).setdefault(call, []).append(m)
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"# `llorch_unattended` with N queued tasks ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`uv run python bench/unattended_scan.py --sizes {args.sizes} --calls {args.calls}"
        f"{'' if args.before is None else f' --before {args.before}'}`: "
        f"cores {os.cpu_count()}, load average {load0} at the start and {load1} at the end."
        + ("" if args.before is None else " Sides in the order before, after, after, before."),
        "",
        "| N queued | side | call | server µs/call | client p50 ms | client p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for (n, side), row in rows.items():
        for name, ms in row.items():
            cells = [
                " / ".join(f"{m[key]:{fmt}}" for m in ms)
                for key, fmt in (
                    ("server_us", ".1f"),
                    ("client_p50_ms", ".3f"),
                    ("client_p99_ms", ".3f"),
                )
            ]
            lines.append(f"| {n} | {side or '-'} | {name} | {' | '.join(cells)} |")
    emit(lines, args.out)


if __name__ == "__main__":
    asyncio.run(main())
