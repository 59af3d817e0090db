"""A cancel that meets the end of a bounded wait is not dropped (ORCH-2817, amended).

On Python 3.11, ``asyncio.wait_for(event.wait(), t)`` returns normally when the
task is cancelled in the same turn as the event is set: the cancel is lost, and a
waiter in a loop waits on after the shutdown that cancelled it. Each wait below is
woken and cancelled in one turn (nothing in between yields) and must end cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from llama_orch.core._memory_control import ControlChannels
from llama_orch.core.state_lease import LeaseKeeper
from llama_orch.core.state_memory import MemoryStateStore
from llama_orch.core.state_store import Control, PoolPolicy, StoreConfig


async def _woken_and_cancelled(wait: Awaitable[Any], wake: Callable[[], Awaitable[None]]) -> str:
    task = asyncio.ensure_future(wait)
    for _ in range(3):  # the waiter is parked on its event
        await asyncio.sleep(0)
    assert not task.done()
    await wake()  # sets the event without yielding
    task.cancel()  # in the same turn
    try:
        async with asyncio.timeout(2.0):
            await asyncio.shield(task)
    except asyncio.CancelledError:
        return "cancelled"
    except TimeoutError:
        task.cancel()  # a waiter that lost the cancel and waits on: stop it here
        with pytest.raises(asyncio.CancelledError):
            await task
        return "still waiting"
    return "returned"


async def test_the_memory_stores_bell_wait_keeps_a_cancel() -> None:
    store = MemoryStateStore()
    await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=4)}))
    cursor = await store.bell("p")

    async def ring() -> None:
        await store.set_replicas("p", [])  # rings the pool's bell

    assert await _woken_and_cancelled(store.wait_bell("p", cursor, 30.0), ring) == "cancelled"


async def test_the_memory_stores_control_wait_keeps_a_cancel() -> None:
    channels = ControlChannels(clock=lambda: 0.0)
    cursor = channels.cursor("i-a")

    async def send() -> None:
        channels.send("i-a", Control("cancel", "t"))

    assert await _woken_and_cancelled(channels.wait("i-a", cursor, 30.0), send) == "cancelled"


async def test_the_lease_renewer_keeps_a_cancel() -> None:
    store = MemoryStateStore()
    await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=4)}))
    keeper = LeaseKeeper(store, "i-a", 60_000, on_lost=lambda task_id: None)
    stop = asyncio.Event()

    async def stop_it() -> None:
        stop.set()

    assert await _woken_and_cancelled(keeper.run(stop, every_s=30.0), stop_it) == "cancelled"
