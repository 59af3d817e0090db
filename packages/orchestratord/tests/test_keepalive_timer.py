"""ORCH-2744 (ORCH-1962): a reader of a task's event log keeps one keep-alive timer,
not one ``call_later`` per wait: a stream that waits once per token left a cancelled
timer, its arguments and its done future in the loop's heap for ``sse_keepalive_s``
each (issue #20: ~7 per open stream at a token a second). The comment still goes out
``keepalive_s`` after the last frame, never while frames come faster."""

from __future__ import annotations

import asyncio
import gc

from llama_orch.core.api import MetricsEvent
from llama_orch.orchestratord.tasks import KEEPALIVE_FRAME

from .conftest import bare_record


def _timers() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.TimerHandle))


async def _read(frames, out: list[bytes]) -> None:
    async for chunk in frames:
        out.append(chunk)


async def test_a_reader_that_waits_per_frame_holds_one_timer() -> None:
    rec = bare_record()
    out: list[bytes] = []
    # an earlier timer heads the loop's heap, as the server's others do: a cancelled
    # timer behind it stays in the heap until its own time
    head = asyncio.get_running_loop().call_later(10.0, lambda: None)
    reader = asyncio.create_task(_read(rec.frames(keepalive_s=30.0), out))
    await asyncio.sleep(0.01)
    before = _timers()
    for i in range(60):  # 60 waits, each woken by a frame
        rec.append(MetricsEvent(predicted_finish_ms=i))
        for _ in range(3):
            await asyncio.sleep(0)
    assert len(out) == 60 and KEEPALIVE_FRAME not in out
    assert _timers() - before <= 1  # one call_later per wait: 60 cancelled timers
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    head.cancel()


async def test_the_comment_goes_out_keepalive_s_after_the_last_frame() -> None:
    rec = bare_record()
    loop = asyncio.get_running_loop()
    got: list[tuple[float, bytes]] = []

    async def read() -> None:
        async for chunk in rec.frames(keepalive_s=0.3):
            got.append((loop.time(), chunk))

    reader = asyncio.create_task(read())
    t0 = loop.time()
    for i in range(6):  # a frame every 0.1 s for 0.6 s: no comment in between
        rec.append(MetricsEvent(predicted_finish_ms=i))
        await asyncio.sleep(0.1)
    last = loop.time() - 0.1
    await asyncio.sleep(0.45)  # idle: one comment ~0.3 s after the last frame's wait began
    pings = [t for t, c in got if c == KEEPALIVE_FRAME]
    events = [c for _, c in got if c != KEEPALIVE_FRAME]
    assert len(events) == 6 and events[0].startswith(b"id: 0\n")
    assert len(pings) == 1, [(round(t - t0, 2), c[:10]) for t, c in got]
    assert 0.25 <= pings[0] - last <= 0.45
    await asyncio.sleep(0.3)  # idle on: one more per keepalive_s
    assert sum(1 for _, c in got if c == KEEPALIVE_FRAME) == 2
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
