"""HTTP surface of orchestratord: OrchQueue v1 data plane and the control plane.

Documented in ``contracts/openapi/data.yaml`` and ``control.yaml``. Every
error goes through one handler that renders the envelope of
:mod:`llama_orch.core.errors` (ORCH-2001); every response except 204 carries
``X-Correlation-Id`` (ORCH-2003).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
from llama_orch.core.adapter_api import available_adapters
from llama_orch.core.api import (
    API_VERSION,
    Capabilities,
    Limits,
    PoolCapability,
    PoolHealth,
    TaskStatus,
)
from llama_orch.core.errors import ErrorCode, NotFound, OrchError, error_for_code
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .control import control_routes
from .service import Orchestrator
from .tracing import CORRELATION_ID

__all__ = ["build_app"]

_json = msgspec.json.Encoder()
_PROM = "text/plain; version=0.0.4; charset=utf-8"


def _json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_json.encode(body), status, headers, media_type="application/json")


def _error_response(exc: OrchError) -> Response:
    headers: dict[str, str] = {}
    if exc.status_code == 429 or exc.retry_after_ms is not None:
        ms = exc.retry_after_ms if exc.retry_after_ms is not None else 1000
        headers["Retry-After"] = str(max(1, math.ceil(ms / 1000)))
        headers["X-Backoff-Ms"] = str(ms)
        if exc.queue_position is not None:
            headers["X-Queue-Position"] = str(exc.queue_position)
            headers["X-Queue-ETA-Ms"] = str(ms)
    return _json_response(exc.body(), exc.status_code, headers)


class CorrelationId:
    """Echo ``X-Correlation-Id`` or create one, on every response but 204."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = None
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                cid = value[:128]
                break
        cid = cid or uuid.uuid4().hex.encode()
        CORRELATION_ID.set(cid.decode("latin-1"))  # log lines and traces (ORCH-7031)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] != 204:
                message["headers"] = [*message.get("headers", []), (b"x-correlation-id", cid)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def build_app(orch: Orchestrator, manager: Any = None, remotes: Sequence[Any] = ()) -> ASGIApp:
    async def submit(request: Request) -> Response:
        accepted = await orch.submit(await request.body())
        headers = {"Location": f"/v1/tasks/{accepted.task_id}"}
        headers.update(orch.budget_headers(accepted.task_id))  # ORCH-1405
        return _json_response(accepted, 202, headers)

    async def task_status(request: Request) -> Response:
        rec = orch.get(request.path_params["task_id"])
        pool = orch.pools[rec.pool_id]
        return _json_response(
            TaskStatus(
                task_id=rec.task_id,
                state=rec.state,
                pool_id=rec.pool_id,
                replica_id=rec.replica_id,
                queue_position=pool.queue.position(rec) if rec.state == "queued" else None,
                tokens_out=rec.tokens_out,
                created_ms=int(rec.created_wall * 1000),
            )
        )

    async def stream(request: Request) -> Response:
        rec = orch.get(request.path_params["task_id"])
        start = 0
        last = request.headers.get("last-event-id")
        if last is not None:
            try:
                start = int(last) + 1
            except ValueError as exc:
                raise error_for_code(ErrorCode.INVALID_PARAMS)(
                    f"Last-Event-ID must be an event number, got {last!r}"
                ) from exc
        return StreamingResponse(
            rec.frames(start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def cancel(request: Request) -> Response:
        orch.cancel(request.path_params["task_id"])
        return Response(status_code=204)

    async def get_session(request: Request) -> Response:
        sid = request.path_params["session_id"]
        s = orch.sessions.get(sid)
        if s is None:
            raise NotFound(f"unknown session {sid}")
        return _json_response(orch.sessions.info(s))

    async def delete_session(request: Request) -> Response:
        sid = request.path_params["session_id"]
        if orch.sessions.delete(sid) is None:
            raise NotFound(f"unknown session {sid}")
        return Response(status_code=204)

    async def capabilities(request: Request) -> Response:
        pools = [
            PoolCapability(
                id=p.id,
                engine=p.engine,
                model_ref=p.config.model,
                ctx_max=p.ctx_max(),
                slots=p.total_slots(),
                replicas_ready=len(p.ready_replicas()),
            )
            for p in orch.pools.values()
        ]
        cpu = any(s.cpu_inference for p in orch.pools.values() for s in p.states.values())
        adm = orch.config.admission
        return _json_response(
            Capabilities(
                api_version=API_VERSION,
                engines=sorted(available_adapters()),
                workloads=["completion", "chat"],
                cpu_inference=cpu,
                allow_cpu_inference=orch.config.allow_cpu_inference,
                pools=pools,
                limits=Limits(
                    queue_capacity=adm.queue_capacity,
                    full_policy=adm.full_policy,
                    max_tokens_limit=adm.max_tokens_limit,
                ),
                features=["sse-resume", "cancel", "sessions", "backpressure-computed"],
                self_tests=sorted(
                    orch.self_tests.reports.values(), key=lambda r: (r.pool_id, r.replica_id)
                ),  # ORCH-7052
            )
        )

    async def pool_health(request: Request) -> Response:
        pid = request.path_params["pool_id"]
        pool = orch.pools.get(pid)
        if pool is None:
            raise NotFound(f"unknown pool {pid}")
        states = sorted(pool.states.values(), key=lambda s: s.replica_id)
        errors = [s.last_error for s in states if s.last_error]
        return _json_response(
            PoolHealth(
                pool_id=pid,
                live=any(s.status in ("starting", "ready", "draining") for s in states),
                ready=any(s.ready for s in states),
                draining=pool.draining,
                last_error=errors[-1] if errors else None,
                queue_depth=len(pool.queue),
                replicas=states,
            )
        )

    async def metrics(request: Request) -> Response:
        return Response(orch.metrics.render(), media_type=_PROM)

    async def on_orch_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OrchError)
        return _error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_PARAMS
        err = error_for_code(code)(str(exc.detail))
        return _json_response(err.body(), exc.status_code)

    routes = [
        Route("/v1/tasks", submit, methods=["POST"]),
        Route("/v1/tasks/{task_id}", task_status, methods=["GET"]),
        Route("/v1/tasks/{task_id}/stream", stream, methods=["GET"]),
        Route("/v1/tasks/{task_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/sessions/{session_id}", get_session, methods=["GET"]),
        Route("/v1/sessions/{session_id}", delete_session, methods=["DELETE"]),
        Route("/v1/capabilities", capabilities, methods=["GET"]),
        Route("/v1/pools/{pool_id}/health", pool_health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    routes += control_routes(orch, manager, remotes)  # drain, reload, reset, replica sets
    app = Starlette(
        routes=routes,
        exception_handlers={OrchError: on_orch_error, HTTPException: on_http_error},
    )
    return CorrelationId(app)
