"""A minimal orchestrator instance over the state store, for the takeover test.

    python _instance.py URL PREFIX NAME TOKENS

Dispatches from pool ``p``, "streams" TOKENS token events per task (20 ms apart)
under a renewed lease, reaps expired leases of other instances and continues the
claimed streams from their last token (ORCH-2511). Prints ``STREAMING <task>``
when it starts streaming a task, so the test knows when to kill it.
"""

from __future__ import annotations

import asyncio
import sys

import msgspec
from llama_orch.core.api import TokenEvent
from llama_orch.core.state_lease import LeaseKeeper
from llama_orch.core.state_store import (
    Dispatched,
    Event,
    Fenced,
    TaskEnded,
    continuation,
)
from llama_orch.state_valkey import ValkeyStateStore

LEASE_MS = 600


async def stream(
    store: ValkeyStateStore, keeper: LeaseKeeper, tid: str, epoch: int, n: int
) -> None:
    try:
        done = continuation(await store.read(tid))
        if not done.started:
            await store.append(tid, epoch, [Event("started", b"{}")])
        start = done.next_index
        print(f"STREAMING {tid}", flush=True)
        for i in range(start, n):
            await asyncio.sleep(0.02)  # the engine's pace
            token = msgspec.json.encode(TokenEvent(f" w{i}", i))
            await store.append(tid, epoch, [Event("token", token)])
        await store.append(tid, epoch, [Event("end", b"{}")])
    except (Fenced, TaskEnded):
        pass  # lost the task: another instance owns or ended it
    finally:
        keeper.release(tid)


async def main(url: str, prefix: str, name: str, n: int) -> None:
    store = ValkeyStateStore(url, key_prefix=prefix)
    await store.start()
    keeper = LeaseKeeper(store, name, LEASE_MS, on_lost=lambda t: None)
    stop = asyncio.Event()
    running: set[asyncio.Task[None]] = set()
    renewer = asyncio.create_task(keeper.run(stop, every_s=0.1))

    def spawn(tid: str, epoch: int) -> None:
        keeper.hold(tid, epoch)
        t = asyncio.create_task(stream(store, keeper, tid, epoch, n))
        running.add(t)
        t.add_done_callback(running.discard)

    while True:
        for r in await keeper.reap_once():
            print(f"{r.outcome.upper()} {r.task_id}", flush=True)
            if r.outcome == "claimed":
                spawn(r.task_id, r.epoch)
        cursor = await store.bell("p")
        d = await store.dispatch("p", name, LEASE_MS)
        if isinstance(d, Dispatched):
            spawn(d.task.task_id, d.epoch)
        else:
            await store.wait_bell("p", cursor, 0.2)
    renewer.cancel()  # pragma: no cover - the process is killed by the test


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
