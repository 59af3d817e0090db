#!/usr/bin/env python3
"""Client CPU of one task's store round trips through ``ValkeyStateStore`` (issue #13).

One embedded valkey-server (stopped by PID at the end), one client, a loop of
``submit`` + ``dispatch`` + ``append`` (started, one token, end) + ``tail`` to the
end: 4 round trips per task. Prints the client process's CPU per task
(``time.process_time``), which is what the store adds to an orchestratord
instance per request, round trip by round trip.

    uv run python bench/store_client_cpu.py [--tasks 2000]
"""

from __future__ import annotations

import argparse
import asyncio
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


async def run(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="store-cpu-"))
    server = EmbeddedServer(tmp / "valkey")
    url = server.start()
    try:
        s = ValkeyStateStore(url, key_prefix="cpu")
        await s.start()
        await s.configure(StoreConfig(pools={"p": PoolPolicy(capacity=n + 1)}))
        await s.set_replicas("p", [SlotView(replica_id="r", set_key="A", ready=True, slots=n)])
        events = [Event("started", b"{}"), Event("token", b'{"t":"a","i":0}'), Event("end", b"{}")]
        t0 = time.process_time()
        for i in range(n):
            await s.submit(
                TaskSpec(task_id=f"t{i}", pool="p", priority="batch", request=b"x" * 300)
            )
            d = await s.dispatch("p", "i", 60_000)
            assert isinstance(d, Dispatched)
            await s.append(f"t{i}", d.epoch, events)
            async for _ in s.tail(f"t{i}"):
                pass
        cpu = time.process_time() - t0
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        parser = "libvalkey" if getattr(valkey.utils, "LIBVALKEY_AVAILABLE", False) else "python"
        print(
            f"{n} tasks, 4 round trips each, parser {parser}, load {load}: "
            f"client CPU {cpu / n * 1e6:.0f} µs per task, {cpu / n / 4 * 1e6:.0f} µs per round trip"
        )
        await s.close()
    finally:
        server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=2000)
    asyncio.run(run(ap.parse_args().tasks))
