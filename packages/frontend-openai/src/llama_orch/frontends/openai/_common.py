"""What the OpenAI and Anthropic facades share: llama-orch's own request
conventions, model resolution, the retry contract of rejected requests, and the
responses that cancel their task when the client goes away."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from llama_orch.core.api import EndEvent
from llama_orch.core.errors import ErrorCode, OrchError
from llama_orch.orchestratord.frontends import FrontendHost
from llama_orch.orchestratord.leanconn import APP_QUEUE, AppQueue
from llama_orch.orchestratord.limits import TaskStream
from llama_orch.orchestratord.pools import Pool
from llama_orch.orchestratord.tasks import TaskRecord
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

__all__ = [
    "MAX_RETRY_AFTER_MS",
    "TASK_ID_HEADER",
    "ApiError",
    "BoundedStream",
    "Extras",
    "TaskResponse",
    "TaskStreamResponse",
    "completion_tokens",
    "error_param",
    "extras_from",
    "resolve_model",
    "retry_headers",
]

_log = logging.getLogger("llama_orch.frontends.openai")

TASK_ID_HEADER = "X-Llorch-Task-Id"  # ORCH-9110
# The official SDKs honour a server delay only up to a bound (60 s in the
# releases that published one, 120 s later) and otherwise back off on their
# own, or stop retrying: 60 s is honoured by every release (ORCH-9111).
MAX_RETRY_AFTER_MS = 60_000
_AT = re.compile(r" - at `\$\.?([^`]*)`")


class ApiError(Exception):
    """An error found by a facade before admission, in facade terms."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_param(exc: OrchError) -> str | None:
    """The field an llama-orch error names (`` - at `$.x` ``), if any."""
    m = _AT.search(exc.message)
    return m.group(1) or None if m else None


@dataclass(frozen=True, slots=True)
class Extras:
    priority: str | None
    deadline_ms: int | None
    session_id: uuid.UUID | None


def _int(value: str, field: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ApiError(
            400, f"{field} must be an integer", param=field, code="invalid_value"
        ) from None
    if n < 1:
        raise ApiError(400, f"{field} must be at least 1", param=field, code="invalid_value")
    return n


def extras_from(
    request: Request, metadata: dict[str, str] | None, body: dict[str, object]
) -> Extras:
    """Priority, deadline and session of a request (ORCH-9110): ``X-Llorch-*``
    headers first, then body extras (``priority``, ``deadline_ms``,
    ``session_id``, what SDKs send as ``extra_body``), then ``metadata``
    entries ``llorch_priority``, ``llorch_deadline_ms``, ``llorch_session_id``."""
    meta = metadata or {}
    # ORCH-9284: one pass over the raw headers keeps the first value of each
    # ``x-llorch-*`` (what ``Headers.get`` returns); three ``Headers.get`` misses, the
    # usual case, cost three list scans and three KeyErrors per request.
    h: dict[str, str] = {}
    for key, value in request.headers.raw:
        if key.startswith(b"x-llorch-"):
            h.setdefault(key.decode("latin-1"), value.decode("latin-1"))

    def pick(header: str, name: str) -> tuple[str | None, str]:
        if (v := h.get(header)) is not None:
            return v, header
        if (b := body.get(name)) is not None:
            return str(b), name
        if (m := meta.get(f"llorch_{name}")) is not None:
            return m, f"metadata.llorch_{name}"
        return None, name

    priority, where = pick("x-llorch-priority", "priority")
    if priority is not None and priority not in ("interactive", "batch"):
        raise ApiError(
            400, f"{where} must be 'interactive' or 'batch'", param=where, code="invalid_value"
        )
    deadline, where = pick("x-llorch-deadline-ms", "deadline_ms")
    deadline_ms = _int(deadline, where) if deadline is not None else None
    sid, where = pick("x-llorch-session-id", "session_id")
    session = None
    if sid is not None:
        try:
            session = uuid.UUID(sid)
        except ValueError:
            raise ApiError(
                400, f"{where} must be a UUID", param=where, code="invalid_value"
            ) from None
    return Extras(priority, deadline_ms, session)


def resolve_model(host: FrontendHost, model: str) -> Pool:
    """A pool by its id, else the pool serving model ``model`` (ORCH-9112)."""
    pool = host.pools.get(model)
    if pool is not None:
        return pool
    for pool in host.pools.values():
        if pool.config.model == model:
            return pool
    raise ApiError(
        404, f"The model `{model}` does not exist", param="model", code="model_not_found"
    )


def completion_tokens(rec: TaskRecord, end: EndEvent) -> int:
    """ORCH-9250: the engine's count of the tokens it generated for the task, not the
    token events (an engine such as vLLM may put several tokens in one chunk)."""
    return max(end.tokens_out, rec.engine_tokens)


def retry_headers(delay_ms: int) -> tuple[int, dict[str, str]]:
    """Status and headers of a request to retry later: 429 within the SDKs' bound,
    503 with the bound when the predicted wait is longer (ORCH-9111)."""
    status = 429 if delay_ms <= MAX_RETRY_AFTER_MS else 503
    sent = min(delay_ms, MAX_RETRY_AFTER_MS)
    return status, {
        "retry-after-ms": str(sent),
        "retry-after": str(max(1, math.ceil(sent / 1000))),
        "x-llorch-predicted-wait-ms": str(delay_ms),
        "x-should-retry": "true",
    }


def is_retry_later(exc: OrchError) -> bool:
    return exc.code in (
        ErrorCode.ADMISSION_REJECT,
        ErrorCode.QUEUE_FULL_DROP_LRU,
        ErrorCode.POOL_UNREADY,
        ErrorCode.POOL_UNAVAILABLE,
    )


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class BoundedStream(TaskStream):
    """An event stream of one task: one of its tenant's open streams and cut when its
    reader stalls, as a task stream (ORCH-8013, ORCH-8015, the server's own ``send``
    per chunk, ORCH-2763). Its end, by the task's end, a cut or the client's leaving,
    leaves the task as it is: a background response's stream (ORCH-9118, ORCH-9119)."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        host: FrontendHost,
        rec: TaskRecord,
        headers: dict[str, str],
    ) -> None:
        super().__init__(
            chunks,
            task_id=rec.task_id,
            tenant=rec.tenant,
            counter=host.streams,
            stall_timeout_s=host.orch.config.limits.stream_stall_timeout_s,
            headers=headers,
        )
        self._host, self._rec = host, rec

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except OSError:  # the socket closed under a send: the client is gone too
            pass


class TaskStreamResponse(BoundedStream):
    """A :class:`BoundedStream` whose task is canceled when its client goes away or
    stops reading before the end (ORCH-9117, ORCH-9113): the engine slot is freed, not
    left to generate for nobody."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._rec.terminal:
                _log.info("client of task %s went away: canceling it", self._rec.task_id)
                self._host.cancel(self._rec)


class TaskResponse(Response):
    """A whole-body answer computed when the task ends; the task is canceled if
    the client goes away first (ORCH-9113)."""

    def __init__(
        self,
        produce: Callable[[], Awaitable[tuple[int, bytes, dict[str, str]]]],
        host: FrontendHost,
        rec: TaskRecord,
    ) -> None:
        super().__init__(None, 200, media_type="application/json")
        self._produce, self._host, self._rec = produce, host, rec

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def answer() -> None:
            status, body, headers = await self._produce()
            resp = Response(body, status, headers, media_type="application/json")
            await resp(scope, receive, send)

        await _race(answer(), scope, receive, self._host, self._rec)


async def _race(
    work: Awaitable[None], scope: Scope, receive: Receive, host: FrontendHost, rec: TaskRecord
) -> None:
    """Run ``work`` until it ends or the client goes away; then a task not ended is
    canceled (ORCH-9113). Under orchestratord's servers the request's queue tells the
    disconnect by a callback and ``work`` runs in the request's own task (ORCH-2809);
    under another server a worker task and a watcher task on ``receive`` race."""
    queue = scope.get(APP_QUEUE)
    if not isinstance(queue, AppQueue):
        return await _race_tasks(work, receive, host, rec)
    task = asyncio.current_task()
    assert task is not None
    state = ""

    def on_message(message: Message) -> None:
        nonlocal state
        if message["type"] == "http.disconnect" and not state:
            state = "gone"
            task.cancel()

    queue.watch(on_message)
    try:
        await work
    except asyncio.CancelledError:
        if state != "gone":
            raise
        task.uncancel()
    except OSError:  # the socket closed under a send: the client is gone too
        pass
    finally:
        state = state or "ended"  # a callback from now on must not cancel what follows
        queue.watch(None)
        if not rec.terminal:
            _log.info("client of task %s went away: canceling it", rec.task_id)
            host.cancel(rec)


async def _race_tasks(
    work: Awaitable[None], receive: Receive, host: FrontendHost, rec: TaskRecord
) -> None:
    worker = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({worker, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (worker, watcher):
            t.cancel()
        # an exception of the worker (e.g. the socket closed under send) still ends the task
        results = await asyncio.gather(worker, watcher, return_exceptions=True)
        if not rec.terminal:
            _log.info("client of task %s went away: canceling it", rec.task_id)
            host.cancel(rec)
    err = results[0]
    if isinstance(err, BaseException) and not isinstance(err, asyncio.CancelledError):
        if not isinstance(err, OSError):
            raise err
