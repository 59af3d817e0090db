#!/usr/bin/env python3
"""Benchmark of the state stores, memory vs valkey side by side (issue #13, ORCH-2515).

One run prints, for each backend:

* **admission+dispatch pairs/s**: one ``submit`` plus one ``dispatch`` (and, in one
  row, both as one ``submit_dispatch`` call, ORCH-2569) with a
  standing backlog of 1000 (2 priorities x 8 tenants, 1 in 8 with a deadline, a
  tenant token bucket): one client sequentially, one client with ``--concurrency``
  requests in flight (an instance serving many requests), ``--clients`` clients
  (own connections) together; and whole tasks/s (pair + terminal ``append``);
* **event appends/s**: token events one per call, and coalesced in batches of
  ``--batch`` events per call (one entry per event, SSE ids unchanged).

The valkey server is the package's own embedded one (AOF on, appendfsync everysec).
Goal from the issue: >= 2,000 admission+dispatch pairs/s per instance through Valkey.

    uv run python bench/state_store.py [--pairs 3000] [--clients 4] [--events 5000] [--batch 16]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import time
from collections.abc import Awaitable, Callable

from llama_orch.core.config import TenantConfig
from llama_orch.core.state_memory import MemoryStateStore
from llama_orch.core.state_store import (
    Dispatched,
    Event,
    PoolPolicy,
    SlotView,
    StateStore,
    StoreConfig,
    TaskSpec,
)
from llama_orch.state_valkey import EmbeddedServer, ValkeyStateStore

PRIOS = ("interactive", "batch")
TENANTS = tuple(f"t{n}" for n in range(8))
CONFIG = StoreConfig(
    pools={"p": PoolPolicy(capacity=1_000_000)},
    tenants={"t0": TenantConfig(weight=3, rps=1e6, burst=1_000_000)},
)
_ids = itertools.count()


def _spec(n: int) -> TaskSpec:
    return TaskSpec(
        task_id=f"b{next(_ids)}",
        pool="p",
        priority=PRIOS[n % 2],  # type: ignore[arg-type]
        tenant=TENANTS[n % 8],
        deadline_ms=1_900_000_000_000 + n if n % 8 == 0 else None,
        request=b'{"prompt":"hello","max_tokens":64}',
    )


async def _prepare(store: StateStore, backlog: int) -> None:
    await store.configure(CONFIG)
    # Enough slots that a pair never waits for an end (the end is measured apart).
    slots = [SlotView(replica_id="r1", set_key="A", ready=True, slots=1_000_000)]
    await store.set_replicas("p", slots)
    for n in range(backlog):
        await store.submit(_spec(n))


async def _pairs(
    store: StateStore, n: int, instance: str, end: bool, *, one_call: bool = False
) -> float:
    """Seconds for n x (submit + dispatch [+ terminal append]); ``one_call``: the pair
    as one ``submit_dispatch`` (ORCH-2569)."""
    t0 = time.perf_counter()
    for i in range(n):
        if one_call:
            _, d = await store.submit_dispatch(_spec(i), instance, 60_000)
        else:
            await store.submit(_spec(i))
            d = await store.dispatch("p", instance, 60_000)
        assert isinstance(d, Dispatched), d
        if end:
            await store.append(d.task.task_id, d.epoch, [Event("end", b"{}")])
    return time.perf_counter() - t0


async def _server_cpu(store: StateStore) -> float:
    if not isinstance(store, ValkeyStateStore):
        return 0.0
    cpu = await store.client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def _appends(store: StateStore, events: int, batch: int) -> float:
    await store.submit(_spec(1))
    d = await store.dispatch("p", "bench", 600_000)
    assert isinstance(d, Dispatched)
    token = Event("token", b'{"type":"token","t":" hello","i":0}')
    t0 = time.perf_counter()
    for _ in range(events // batch):
        await store.append(d.task.task_id, d.epoch, [token] * batch)
    return time.perf_counter() - t0


async def _measure(
    name: str, open_store: Callable[[], Awaitable[StateStore]], args: argparse.Namespace
) -> dict[str, float]:
    store = await open_store()
    out: dict[str, float] = {}
    try:
        await _prepare(store, 1000)
        await _pairs(store, 200, "warm", True)  # warm-up (connections, function cache)
        cpu0, server0 = time.process_time(), await _server_cpu(store)
        out["pairs/s, 1 client, sequential"] = args.pairs / await _pairs(
            store, args.pairs, "i0", False
        )
        # CPU per pair, so the figure can be read apart from this machine's load:
        # the client process and (valkey) the server process, each per CPU-second.
        client_cpu = time.process_time() - cpu0
        server_cpu = await _server_cpu(store) - server0
        out["pairs per client CPU-second"] = args.pairs / client_cpu
        if server_cpu > 0:
            out["pairs per server CPU-second"] = args.pairs / server_cpu
        cpu0 = time.process_time()
        took = await _pairs(store, args.pairs, "i0", False, one_call=True)
        out["pairs/s, 1 client, sequential, one submit_dispatch call"] = args.pairs / took
        out["pairs per client CPU-second, one call"] = args.pairs / (time.process_time() - cpu0)
        out["tasks/s (pair + end), 1 client"] = args.pairs / await _pairs(
            store, args.pairs, "i0", True
        )
        per = args.pairs // args.concurrency
        t0 = time.perf_counter()
        await asyncio.gather(*(_pairs(store, per, "i0", False) for _ in range(args.concurrency)))
        took = time.perf_counter() - t0
        out[f"pairs/s, 1 client, {args.concurrency} in flight"] = per * args.concurrency / took
        # as orchestratord admits (ORCH-2569): one submit_dispatch per pair, many in flight
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(
            *(_pairs(store, per, "i0", False, one_call=True) for _ in range(args.concurrency))
        )
        took = time.perf_counter() - t0
        key = f"pairs/s, 1 client, {args.concurrency} in flight, one call"
        out[key] = per * args.concurrency / took
        out[f"pairs per client CPU-second, {args.concurrency} in flight, one call"] = (
            per * args.concurrency / (time.process_time() - cpu0)
        )
        peers = [store] + [await open_store() for _ in range(args.clients - 1)]
        per = args.pairs // args.clients
        t0 = time.perf_counter()
        await asyncio.gather(*(_pairs(s, per, f"i{k}", False) for k, s in enumerate(peers)))
        total = per * args.clients / (time.perf_counter() - t0)
        out[f"pairs/s, {args.clients} clients (total)"] = total
        for s in peers[1:]:
            await s.close()
        out["appends/s, 1 event per call"] = args.events / await _appends(store, args.events, 1)
        n = args.events // args.batch * args.batch
        out[f"appends/s, {args.batch} events per call"] = n / await _appends(
            store, args.events, args.batch
        )
    finally:
        if name != "memory":
            await store.close()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    memory = MemoryStateStore()

    async def open_memory() -> StateStore:
        return memory  # one process: every client is the same object

    server = EmbeddedServer()
    url = server.start()
    try:

        async def open_valkey() -> StateStore:
            s = ValkeyStateStore(url, key_prefix="bench")
            await s.start()
            return s

        async def open_valkey_pool() -> StateStore:
            s = ValkeyStateStore(url, key_prefix="bench-pool")
            await s.start()
            s._pipe = None  # every llorch call through valkey-py's pool (before ORCH-2595)
            return s

        results = {
            "memory": await _measure("memory", open_memory, args),
            "valkey-py pool": await _measure("valkey-py pool", open_valkey_pool, args),
            "valkey": await _measure("valkey", open_valkey, args),
        }
        probe = await open_valkey()
        info = await probe.client.info("server")
        version = info.get("valkey_version") or info.get("redis_version")
        fcall = (await probe.client.info("commandstats"))["cmdstat_fcall"]
        t0 = time.perf_counter()
        for _ in range(2000):
            await probe.client.ping()
        ping = 2000 / (time.perf_counter() - t0)
        await probe.close()
    finally:
        server.stop()

    print(
        f"# state store benchmark ({platform.node()}, {platform.python_version()}, "
        f"server {version}, AOF everysec)"
    )
    print(f"# pairs = submit + dispatch (+ terminal append), backlog 1000; {vars(args)}")
    print("# valkey-py pool: the llorch calls through valkey-py (before ORCH-2595); valkey: pipe")
    head = f"{'figure':64} {'memory':>10} {'valkey-py pool':>15} {'valkey':>10}"
    print(f"{head} {'memory/valkey':>14}")
    for key in results["valkey"]:
        m, p, v = (
            results["memory"].get(key),
            results["valkey-py pool"].get(key),
            results["valkey"][key],
        )
        ms = "-" if m is None else f"{m:,.0f}"
        ps = "-" if p is None else f"{p:,.0f}"
        ratio = "-" if m is None else f"{m / v:.1f}"
        print(f"{key:64} {ms:>10} {ps:>15} {v:10,.0f} {ratio:>14}")
    print(
        f"bounds on this machine: PING round trips/s (same client) {ping:,.0f}; "
        f"server time per FCALL {fcall['usec_per_call']:.1f} us over {fcall['calls']:,} calls "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    goal = max(v for k, v in results["valkey"].items() if k.startswith("pairs/s, 1 client"))
    print(
        f"goal >= 2,000 pairs/s per instance through Valkey: {'met' if goal >= 2000 else 'NOT met'}"
        f" ({goal:,.0f})"
    )


if __name__ == "__main__":
    asyncio.run(main())
