"""ORCH-2807: under orchestratord's servers (the request's queue in the scope) a facade's
answer runs in the request's own task, with no task started for it nor for watching
``receive``, and the queue's disconnect callback still cancels the task (ORCH-9113);
under another ASGI server the worker and watcher tasks race as before. No server: the
responses are called with a scope, a queue and a recording ``send``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.frontends.openai._common import TaskResponse, TaskStreamResponse
from llama_orch.orchestratord.leanconn import APP_QUEUE, AppQueue
from llama_orch.orchestratord.tasks import TaskRecord
from starlette.types import Message


def _rec() -> TaskRecord:
    req = GenerateRequest(task_id="t1", prompt="p", max_tokens=4, seed=0)
    return TaskRecord("t1", "pool", "mock", "interactive", req, 1, tenant="a")


class _Host:
    def __init__(self) -> None:
        self.canceled: list[str] = []

    def cancel(self, rec: TaskRecord) -> None:
        self.canceled.append(rec.task_id)


async def _never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _chunks(n: int, then_wait: bool = False) -> AsyncIterator[bytes]:
    for i in range(n):
        yield b"data: %d\n\n" % i
    if then_wait:
        await asyncio.Event().wait()


def _scope(queue: AppQueue | None) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}
    if queue is not None:
        scope[APP_QUEUE] = queue
    return scope


async def test_stream_runs_in_the_request_task_under_the_servers_queue() -> None:
    host, rec, caller = _Host(), _rec(), asyncio.current_task()
    before = len(asyncio.all_tasks())
    seen: list[tuple[str, bool, int]] = []

    async def send(message: Message) -> None:
        seen.append((message["type"], asyncio.current_task() is caller, len(asyncio.all_tasks())))

    resp = TaskStreamResponse(_chunks(2), host, rec, {})  # type: ignore[arg-type]
    await resp(_scope(AppQueue()), _never, send)
    assert [t for t, _, _ in seen] == ["http.response.start"] + ["http.response.body"] * 3
    # every message sent by the caller's own task, and no task was started meanwhile
    assert all(mine for _, mine, _ in seen) and all(n == before for _, _, n in seen)
    assert host.canceled == ["t1"]  # the rec never ended here: canceled as before


async def test_disconnect_by_the_queue_cancels_the_task_and_ends_the_answer() -> None:
    host, rec, queue = _Host(), _rec(), AppQueue()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    resp = TaskStreamResponse(_chunks(1, then_wait=True), host, rec, {})  # type: ignore[arg-type]
    call = asyncio.ensure_future(resp(_scope(queue), _never, send))
    while len(sent) < 2:  # the head and the first chunk
        await asyncio.sleep(0)
    assert not call.done()
    queue.put_nowait({"type": "http.disconnect"})
    await asyncio.wait_for(call, 1)  # returns (no CancelledError to the server)
    assert host.canceled == ["t1"]
    assert not any(m.get("more_body") is False for m in sent)  # no final chunk: a cut


async def test_a_server_cancel_still_propagates_and_cancels_the_task() -> None:
    host, rec = _Host(), _rec()

    async def send(message: Message) -> None:
        pass

    resp = TaskStreamResponse(_chunks(1, then_wait=True), host, rec, {})  # type: ignore[arg-type]
    call = asyncio.ensure_future(resp(_scope(AppQueue()), _never, send))
    await asyncio.sleep(0.01)
    call.cancel()
    try:
        await call
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the server's cancel was swallowed")
    assert host.canceled == ["t1"]


async def test_whole_body_answer_in_the_request_task_and_socket_errors_swallowed() -> None:
    host, rec, caller = _Host(), _rec(), asyncio.current_task()
    tasks: list[bool] = []

    async def produce() -> tuple[int, bytes, dict[str, str]]:
        tasks.append(asyncio.current_task() is caller)
        return 200, b"{}", {}

    async def send(message: Message) -> None:
        raise ConnectionResetError  # the socket closed under send

    resp = TaskResponse(produce, host, rec)  # type: ignore[arg-type]
    await resp(_scope(AppQueue()), _never, send)
    assert tasks == [True] and host.canceled == ["t1"]


async def test_without_the_servers_queue_the_worker_and_watcher_race() -> None:
    host, rec, caller = _Host(), _rec(), asyncio.current_task()
    mine: list[bool] = []
    disconnect = asyncio.Event()

    async def receive() -> Message:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        mine.append(asyncio.current_task() is caller)
        disconnect.set()

    resp = TaskStreamResponse(_chunks(1, then_wait=True), host, rec, {})  # type: ignore[arg-type]
    await asyncio.wait_for(resp(_scope(None), receive, send), 1)
    assert mine and not any(mine)  # sent from the worker task
    assert host.canceled == ["t1"]
