"""ORCH-6241: in-process daemons stop together; a hang fails with where it waits."""

from __future__ import annotations

import asyncio

import pytest
from llama_orch.testing_engines.inprocess import stop_served


async def _well_behaved(stop: asyncio.Event) -> None:
    await stop.wait()


async def _stuck_in_shutdown(stop: asyncio.Event, never: asyncio.Event) -> None:
    await stop.wait()
    await _drain_forever(never)


async def _drain_forever(never: asyncio.Event) -> None:
    await never.wait()


async def _fails_on_stop(stop: asyncio.Event) -> None:
    await stop.wait()
    raise RuntimeError("shutdown failed")


def _serve(coro_fn, *args):
    stop = asyncio.Event()
    return stop, asyncio.create_task(coro_fn(stop, *args))


async def test_all_stop_together():
    served = [_serve(_well_behaved) for _ in range(3)]
    await stop_served(served, 1.0)
    assert all(task.done() and not task.cancelled() for _, task in served)


async def test_a_hang_names_where_it_waits_and_is_cancelled():
    never = asyncio.Event()
    ok, stuck = _serve(_well_behaved), _serve(_stuck_in_shutdown, never)
    with pytest.raises(TimeoutError) as err:
        await stop_served([stuck, ok], 0.2)
    text = str(err.value)
    assert "1 of 2 daemons did not stop within 0.2 s" in text
    # the chain down to the coroutine that waits, not only the task's own frame
    assert "_stuck_in_shutdown" in text and "_drain_forever" in text
    assert stuck[1].cancelled() and ok[1].done() and not ok[1].cancelled()


async def test_a_daemon_error_is_raised_after_all_stopped():
    ok, bad = _serve(_well_behaved), _serve(_fails_on_stop)
    with pytest.raises(RuntimeError, match="shutdown failed"):
        await stop_served([bad, ok], 1.0)
    assert ok[1].done()
