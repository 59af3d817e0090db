#!/usr/bin/env python3
"""Client CPU of one task's store round trips through ``ValkeyStateStore`` (issue #13).

One embedded valkey-server (stopped by PID at the end), one client process. Each
task makes the calls an orchestratord makes for a 1-token request (measured by
``bench/store_round_trips.py``: one ``submit_dispatch`` and the task's events in
an ``append_many``; its stream is served from what the instance stored, ORCH-2571):
2 round trips per task when tasks run one at a time. Prints the client process's CPU
per task (``time.process_time``), which is what the store adds to an orchestratord
instance per request, for the llorch calls sent through valkey-py's connection pool
and through the pipelined connection (ORCH-2595), side by side in one run, with one
task at a time (``c=1``) and ``--concurrency`` tasks in flight (an instance serving
many requests; the pipe then sends the calls of one loop turn in one write).

    uv run python bench/store_client_cpu.py [--tasks 2000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import valkey.utils
from llama_orch.core.state_store import (
    Dispatched,
    Event,
    PoolPolicy,
    SlotView,
    StoreConfig,
    TaskSpec,
)
from llama_orch.state_valkey import EmbeddedServer, ValkeyStateStore

EVENTS = [Event("started", b"{}"), Event("token", b'{"t":"a","i":0}'), Event("end", b"{}")]
_ids = itertools.count()


async def _task(s: ValkeyStateStore) -> None:
    tid = f"t{next(_ids)}"
    spec = TaskSpec(task_id=tid, pool="p", priority="batch", request=b"x" * 300)
    _, d = await s.submit_dispatch(spec, "i", 60_000)
    assert isinstance(d, Dispatched) and d.task.task_id == tid
    (nxt,) = await s.append_many([(tid, d.epoch, EVENTS)])
    assert nxt == d.next_seq + len(EVENTS), nxt


async def _measure(s: ValkeyStateStore, n: int, c: int) -> float:
    """Client CPU µs per task, ``n`` tasks with ``c`` in flight."""

    async def worker(k: int) -> None:
        for _ in range(k):
            await _task(s)

    t0 = time.process_time()
    await asyncio.gather(*(worker(n // c) for _ in range(c)))
    return (time.process_time() - t0) / (n // c * c) * 1e6


async def run(n: int, c: int, rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="store-cpu-"))
    server = EmbeddedServer(tmp / "valkey")
    url = server.start()
    try:
        stores = {}
        for name in ("valkey-py", "pipe"):
            s = ValkeyStateStore(url, key_prefix=f"cpu-{name}")
            await s.start()
            if name == "valkey-py":
                s._pipe = None  # every llorch call through valkey-py's pool, as before
            await s.configure(StoreConfig(pools={"p": PoolPolicy(capacity=10 * n + 10)}))
            await s.set_replicas(
                "p", [SlotView(replica_id="r", set_key="A", ready=True, slots=10 * n)]
            )
            await _measure(s, 200, 1)  # warm-up
            stores[name] = s
        res: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):  # alternated, so a change of load hits both
            for name, s in stores.items():
                for conc in (1, c):
                    res.setdefault((name, conc), []).append(await _measure(s, n, conc))
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        parser = "libvalkey" if getattr(valkey.utils, "LIBVALKEY_AVAILABLE", False) else "python"
        print(f"{n} tasks per measure, {rounds} rounds, parser {parser}, load at end {load}")
        print("client CPU µs per task (submit_dispatch + append_many): median [min..max]")
        print(f"| path | c=1 | c={c} |")
        print("|---|---|---|")
        for name in stores:
            cells = []
            for conc in (1, c):
                v = res[(name, conc)]
                cells.append(f"{statistics.median(v):.0f} [{min(v):.0f}..{max(v):.0f}]")
            print(f"| {name} | {cells[0]} | {cells[1]} |")
        for s in stores.values():
            await s.close()
    finally:
        server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    asyncio.run(run(a.tasks, a.concurrency, a.rounds))
