"""ORCH-2770: hypercorn's per-request receive queue and per-connection events, without
empty deques.

The queue and the event must behave as :class:`asyncio.Queue`'s and hypercorn's
``EventWrapper`` do (FIFO, bounded put, a cancelled waiter passes its wake-up on),
and orchestratord's hypercorn connections must really use them: a tiny ASGI app
served with orchestratord's connection class sees its ``receive`` bound to an
:class:`AppQueue` and no :class:`asyncio.Queue` or deque is made for a request.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import socket
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from llama_orch.orchestratord.leanconn import AppQueue, LeanEvent
from llama_orch.orchestratord.writes import coalesce_hypercorn_writes


async def test_app_queue_is_fifo_and_a_getter_waits_for_a_put() -> None:
    q = AppQueue(0)
    got = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not got.done()
    await q.put("a")
    await q.put("b")
    assert await got == "a"
    assert await q.get() == "b"
    assert q.qsize() == 0


async def test_app_queue_put_waits_while_full() -> None:
    q = AppQueue(2)
    await q.put(1)
    await q.put(2)
    assert q.full()
    blocked = asyncio.create_task(q.put(3))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert await q.get() == 1
    await asyncio.wait_for(blocked, 1)
    assert [await q.get(), await q.get()] == [2, 3]


async def test_app_queue_a_woken_getter_cancelled_hands_the_item_on() -> None:
    q = AppQueue(0)
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    await q.put("x")  # wakes ``first``...
    first.cancel()  # ...which is cancelled before it runs: ``second`` must get the item
    assert await asyncio.wait_for(second, 1) == "x"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_app_queue_a_cancelled_getter_is_forgotten() -> None:
    q = AppQueue(0)
    waiting = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await q.put("y")
    assert await q.get() == "y"


async def test_lean_event_sets_clears_and_wakes_every_waiter() -> None:
    ev = LeanEvent()
    assert not ev.is_set()
    waiters = [asyncio.create_task(ev.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    await ev.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert ev.is_set()
    await ev.clear()
    assert not ev.is_set()
    late = asyncio.create_task(ev.wait())
    await asyncio.sleep(0)
    assert not late.done()
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late


def _deques() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is collections.deque)


async def test_a_request_under_orchestratords_server_gets_an_app_queue_and_no_deque() -> None:
    coalesce_hypercorn_writes()
    seen: dict[str, Any] = {}
    holding = asyncio.Event()
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen["receive_owner"] = getattr(receive, "__self__", None)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        holding.set()
        await release.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    cfg = Config()
    cfg.bind = [f"fd://{sock.detach()}"]
    cfg.accesslog = None
    cfg.graceful_timeout = 0.5
    stop = asyncio.Event()
    # hypercorn's Framework union does not name a plain ASGI callable (same protocol)
    served = asyncio.create_task(serve(app, cfg, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    writer = None
    try:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.01)
        assert writer is not None
        gc.collect()
        before = _deques()
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.wait_for(holding.wait(), 5)
        gc.collect()
        during = _deques()
        # the request is open (its app waits): its queue is ours, and neither the
        # request nor its connection made a deque (asyncio.Queue makes three, its
        # Event and hypercorn's can_read one each)
        assert type(seen["receive_owner"]) is AppQueue
        assert during - before <= 1, (before, during)  # asyncio's StreamReader has none
        release.set()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        release.set()
        if writer is not None:
            writer.close()
        stop.set()
        await asyncio.wait_for(asyncio.gather(served, return_exceptions=True), 10)


def _disconnect_watchers() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if "_until_disconnect" in repr(t.get_coro())]


async def test_an_open_stream_under_orchestratords_server_has_no_watcher_task(
    start_orchestrator, mock_config
):
    """ORCH-2772: the writer learns the disconnect from the request's queue (a callback),
    so an open stream holds no task of its own for it; the disconnect still ends it
    (test_streaming.py::test_sse_writer_ends_at_the_disconnect proves that end)."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 20}))
    resp = await run.http.post(
        run.url + "/v1/tasks",
        json={"prompt": "x", "max_tokens": 400},
        headers={"Accept": "text/event-stream"},
    )
    assert resp.status == 200
    assert await resp.content.readany()  # the stream is open and writing
    assert _disconnect_watchers() == []
    tid = resp.headers["X-Task-Id"]
    resp.close()
    async with run.http.post(f"{run.url}/v1/tasks/{tid}/cancel") as r:
        assert r.status == 204


async def test_the_writer_under_another_server_ends_at_the_disconnect() -> None:
    """ORCH-2772: without orchestratord's queue in the scope (another ASGI server) a task
    waits on ``receive`` and the disconnect ends the writer, the task's log unread."""
    from llama_orch.orchestratord.limits import StreamCounter, TaskStream

    never = asyncio.Event()

    async def frames() -> Any:
        yield b"id: 0\nevent: x\ndata: {}\n\n"
        await never.wait()  # the task runs on; only the disconnect can end the writer
        yield b""

    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message.get("body"):
            await inbox.put({"type": "http.disconnect"})  # the client goes after one frame

    counter = StreamCounter()
    stream = TaskStream(frames(), task_id="t", tenant="a", counter=counter, stall_timeout_s=60)
    assert counter["a"] == 1
    await asyncio.wait_for(stream({"type": "http"}, inbox.get, send), 5)
    assert counter["a"] == 0
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert _disconnect_watchers() == []  # ended with the writer
