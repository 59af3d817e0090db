"""HTTP surface of orchestratord: OrchQueue v1 data plane and the control plane.

Documented in ``contracts/openapi/data.yaml`` and ``control.yaml``. Every
error goes through one handler that renders the envelope of
:mod:`llama_orch.core.errors` (ORCH-2001); every response except 204 carries
``X-Correlation-Id`` (ORCH-2003).

Every route sits behind :meth:`Authenticator.guard` with the access it needs
(ORCH-8003); a tenant sees only its own tasks and sessions, and another
tenant's answer 404 exactly like unknown ones (ORCH-8005).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from llama_orch.core.adapter_api import available_adapters
from llama_orch.core.api import (
    API_VERSION,
    Capabilities,
    Limits,
    PoolCapability,
    PoolHealth,
    StateStoreInfo,
    TaskStatus,
)
from llama_orch.core.config import LimitsConfig
from llama_orch.core.errors import (
    ErrorCode,
    InternalError,
    InvalidParams,
    NotFound,
    OrchError,
    error_for_code,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .artifacts import ARTIFACT_ROUTES
from .auth import Access, Authenticator, Principal, load_keys
from .catalog_api import CATALOG_ROUTES
from .catalog_service import deprecation_headers
from .control import CONTROL_ROUTES, ControlPlane
from .frontends import FrontendHost, load_frontends
from .ids import new_correlation_id
from .leanroutes import Endpoint, ExceptionHandler, LeanRoutes, lean_endpoints
from .limits import RAW_SEND, BodyLimit, StreamCounter
from .overview import OVERVIEW_ROUTES
from .pool_control import PoolControls, follow_drains
from .service import Orchestrator
from .stored_waiting import store_status
from .streaming import check_stream_quota, open_stream, wants_event_stream
from .tasks import TaskRecord
from .tracing import CORRELATION_ID, TRACE_CARRIER, Tracing, trace_carrier

if TYPE_CHECKING:
    from llama_orch.pool_managerd.pool import PoolManager

    from .remote import RemotePoolManagerClient

__all__ = ["build_app"]

_log = logging.getLogger("llama_orch.orchestratord")
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
    if exc.code == ErrorCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="llama-orch"'  # RFC 6750
    return _json_response(exc.body(), exc.status_code, headers)


class CorrelationId:
    """Echo ``X-Correlation-Id`` or create one, on every response but 204; with tracing
    on, keep the request's W3C trace context for its task (ORCH-7043)."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = None
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                cid = value[:128]
                break
        cid = cid or new_correlation_id()  # ORCH-2806
        CORRELATION_ID.set(cid.decode("latin-1"))  # log lines and traces (ORCH-7031)
        if self.tracing.enabled:  # ORCH-7043: off, no header is even looked at
            TRACE_CARRIER.set(trace_carrier(scope["headers"]))
        scope[RAW_SEND] = send  # SSE frames skip the wrappers below (limits.TaskStream)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] != 204:
                message["headers"] = [*message.get("headers", []), (b"x-correlation-id", cid)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _principal(request: Request) -> Principal:
    who: Principal = request.state.principal
    return who


def _prompt_bytes(body: bytes) -> int:
    """UTF-8 size of ``prompt`` or of every message's ``content`` (0 if undecodable:
    strict decoding reports the real problem later)."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return 0
    if not isinstance(doc, dict):
        return 0
    size = len(doc["prompt"].encode()) if isinstance(doc.get("prompt"), str) else 0
    messages = doc.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                size += len(m["content"].encode())
    return size


@dataclass(frozen=True)
class AppState:
    """What the data-plane endpoints act on: ``app.state.data`` (set by ``build_app``)."""

    orch: Orchestrator
    streams: StreamCounter
    limits: LimitsConfig


def _app(request: Request) -> AppState:
    data = request.app.state.data
    assert isinstance(data, AppState)
    return data


def own_task(orch: Orchestrator, request: Request) -> TaskRecord:
    """The task if it is the caller's; another tenant's is "unknown" (ORCH-8005)."""
    task_id = request.path_params["task_id"]
    rec = orch.tasks.get(task_id)
    who = _principal(request)
    if rec is None or (who.role is not None and rec.tenant != who.tenant):
        raise NotFound(f"unknown task {task_id}")
    return rec


async def submit(request: Request) -> Response:
    st = _app(request)
    orch = st.orch
    streams = st.streams
    limits = st.limits
    body = await request.body()
    # JSON escapes only shrink when decoded, so a body within the bound holds a
    # prompt within it: the second decode is skipped on the common path.
    size = _prompt_bytes(body) if len(body) > limits.max_prompt_bytes else 0
    if size > limits.max_prompt_bytes:  # ORCH-8011: refused before any tokenizing
        raise InvalidParams(
            f"prompt of {size} bytes exceeds limits.max_prompt_bytes="
            f"{limits.max_prompt_bytes} - at `$.prompt`"
        )
    tenant = _principal(request).tenant
    sse = wants_event_stream(request.headers.get("accept"))  # ORCH-2710
    if sse:
        check_stream_quota(streams, tenant, limits)  # ORCH-2711: before admitting
    # ORCH-1979: a client that names its retries gets a retry reservation
    accepted = await orch.submit(
        body, tenant, idempotency_key=request.headers.get("idempotency-key")
    )
    headers = {"Location": f"/v1/tasks/{accepted.task_id}"}
    headers.update(orch.budget_headers(accepted.task_id))  # ORCH-1405
    headers.update(deprecation_headers())  # ORCH-3334
    if sse:
        rec = orch.tasks.get(accepted.task_id)
        if rec is not None:  # retained: it was admitted with no await since
            headers["X-Task-Id"] = accepted.task_id
            frames = None if orch.state is None else orch.state.frames(rec.task_id, 0)
            return open_stream(rec, streams, limits, headers=headers, frames=frames)
    return _json_response(accepted, 202, headers)


async def hydrate(orch: Orchestrator, request: Request) -> None:
    if orch.state is not None:  # ORCH-2526: a task any instance admitted
        await orch.state.hydrate(request.path_params["task_id"])


async def task_status(request: Request) -> Response:
    orch = _app(request).orch
    await hydrate(orch, request)
    rec = own_task(orch, request)
    pool = orch.pools[rec.pool_id]
    state, position = rec.state, None
    if rec.state == "queued":
        if orch.state is None:
            position = pool.queue.position(rec)
        else:  # ORCH-2563: the store's state and exact position, whoever admitted it
            state, position = await store_status(orch.state, rec)
    return _json_response(
        TaskStatus(
            task_id=rec.task_id,
            state=state,
            pool_id=rec.pool_id,
            replica_id=rec.replica_id,
            queue_position=position,
            tokens_out=rec.tokens_out,
            created_ms=int(rec.created_wall * 1000),
        )
    )


async def stream(request: Request) -> Response:
    st = _app(request)
    orch = st.orch
    streams = st.streams
    limits = st.limits
    await hydrate(orch, request)
    rec = own_task(orch, request)
    start = 0
    last = request.headers.get("last-event-id")
    if last is not None:
        try:
            start = int(last) + 1
        except ValueError as exc:
            raise error_for_code(ErrorCode.INVALID_PARAMS)(
                f"Last-Event-ID must be an event number, got {last!r}"
            ) from exc
    check_stream_quota(streams, rec.tenant, limits)  # ORCH-8013
    frames = None if orch.state is None else orch.state.frames(rec.task_id, start)
    return open_stream(rec, streams, limits, start=start, frames=frames)  # ORCH-2526


async def cancel(request: Request) -> Response:
    orch = _app(request).orch
    await hydrate(orch, request)
    rec = own_task(orch, request)
    if orch.state is not None:
        await orch.state.cancel(rec.task_id)  # ORCH-2510: on any instance
    orch.cancel(rec.task_id)
    return Response(status_code=204)


async def get_session(request: Request) -> Response:
    orch = _app(request).orch
    sid = request.path_params["session_id"]
    s = orch.sessions.get((_principal(request).tenant, sid))
    if s is None:
        raise NotFound(f"unknown session {sid}")
    return _json_response(orch.sessions.info(s))


async def delete_session(request: Request) -> Response:
    orch = _app(request).orch
    sid = request.path_params["session_id"]
    if orch.sessions.delete((_principal(request).tenant, sid)) is None:
        raise NotFound(f"unknown session {sid}")
    return Response(status_code=204)


async def session(request: Request) -> Response:
    if request.method == "DELETE":
        return await delete_session(request)
    return await get_session(request)


async def capabilities(request: Request) -> Response:
    orch = _app(request).orch
    pools = [
        PoolCapability(
            id=p.id,
            engine=p.engine,
            model_ref=p.config.model,
            ctx_max=p.ctx_max(),
            slots=p.total_slots(),
            replicas_ready=len(p.ready_replicas()),
            model_digests=sorted({r.state.model_digest for r in p.ready_replicas()} - {""}),
        )
        for p in orch.pools.values()
    ]
    cpu = any(s.cpu_inference for p in orch.pools.values() for s in p.states.values())
    adm = orch.config.admission
    return _json_response(
        Capabilities(
            api_version=API_VERSION,
            engines=sorted(available_adapters()),
            workloads=["completion", "chat", "embedding"],
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
            state_store=None
            if orch.state is None
            else StateStoreInfo(  # ORCH-2532
                backend=orch.state.options.backend,
                instance_id=orch.state.instance,
                instances=await orch.state.live_instances(),  # ORCH-2543
            ),
        )
    )


async def pool_health(request: Request) -> Response:
    orch = _app(request).orch
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
    orch = _app(request).orch
    return Response(orch.metrics.render(), media_type=_PROM)


async def on_orch_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OrchError)
    return _error_response(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.INVALID_PARAMS
    err = error_for_code(code)(str(exc.detail))
    # a 405 keeps Starlette's Allow header (RFC 9110; found by schemathesis)
    return _json_response(err.body(), exc.status_code, dict(exc.headers or {}))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    # ORCH-2006: the envelope says nothing about the fault; the log has it.
    _log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(InternalError("internal error; see the server log"))


# Starlette's exception handlers, also those of the lean routes (ORCH-2783)
EXCEPTION_HANDLERS: dict[type[Exception], ExceptionHandler] = {
    OrchError: on_orch_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}

# The data plane, declared once: path, endpoint, methods, who may call it (ORCH-8003).
DATA_ROUTES: list[tuple[str, Any, list[str], Access]] = [
    ("/v1/tasks", submit, ["POST"], "tenant"),
    ("/v1/tasks/{task_id}", task_status, ["GET"], "tenant"),
    ("/v1/tasks/{task_id}/stream", stream, ["GET"], "tenant"),
    ("/v1/tasks/{task_id}/cancel", cancel, ["POST"], "tenant"),
    # one route for both methods, so a 405 lists both in Allow (found by schemathesis)
    ("/v1/sessions/{session_id}", session, ["GET", "DELETE"], "tenant"),
    ("/v1/capabilities", capabilities, ["GET"], "any"),
    ("/v1/pools/{pool_id}/health", pool_health, ["GET"], "health"),
    ("/metrics", metrics, ["GET"], "metrics"),
]


def build_app(
    orch: Orchestrator,
    manager: PoolManager | None = None,
    remotes: list[RemotePoolManagerClient] | None = None,
    *,
    auth: Authenticator | None = None,
    lean_routes: bool = True,
) -> ASGIApp:
    """The whole HTTP surface. ``lean_routes=False``: every route through Starlette's
    routing, also submit and stream (for the test that both paths answer alike)."""
    limits = orch.config.limits
    if auth is None:
        auth = Authenticator(orch.config.auth, load_keys(orch.config.auth))
    orch.auth = auth  # ORCH-8009: what a SIGHUP reload reaches
    auth.refusals = orch.metrics.auth_refused  # ORCH-8017

    guarded = {path: auth.guard(endpoint, access) for path, endpoint, _, access in DATA_ROUTES}
    routes: list[BaseRoute] = [
        Route(path, guarded[path], methods=methods) for path, _, methods, _ in DATA_ROUTES
    ]
    # drain, reload, reset, replica sets: admin only
    for r in [
        *CONTROL_ROUTES,
        *OVERVIEW_ROUTES,
        *CATALOG_ROUTES,  # ORCH-3321 (issue #18)
    ]:
        routes.append(Route(r.path, auth.guard(r.endpoint, "admin"), methods=r.methods))
    # artifacts: content-addressed, per tenant (ORCH-3350, issue #18)
    for r in ARTIFACT_ROUTES:
        routes.append(Route(r.path, auth.guard(r.endpoint, "tenant"), methods=r.methods))
    # other APIs on the same queue, from installed frontends (ORCH-9100)
    metrics = orch.metrics
    streams = StreamCounter(metrics.streams_cut, metrics.streams_refused)  # ORCH-8018/8019
    host = FrontendHost(orch, auth, streams)  # the facades' streams count too (ORCH-9117)
    lean: dict[tuple[str, str], Endpoint] = {}
    for frontend in load_frontends():
        mounted = frontend.routes(host)
        routes.extend(mounted)
        lean.update(lean_endpoints(mounted, frontend.lean_routes))
    app = Starlette(routes=routes, exception_handlers=dict(EXCEPTION_HANDLERS))
    app.state.data = AppState(orch, streams, limits)
    app.state.artifacts = orch.catalog.artifacts
    discovered = {pid for d in orch.config.pool_manager_discovery for pid in d.pools}
    controls = PoolControls(manager, remotes if remotes is not None else [], discovered)
    app.state.control = ControlPlane(orch, controls, StreamCounter(metrics.streams_cut))
    follow_drains(orch, controls)  # a drain at the store runs here too (ORCH-2588)
    app.state.frontends = host  # FrontendHost.of(request) (ORCH-4122)
    served: ASGIApp = app
    if lean_routes:  # ORCH-2783: submit and stream below Starlette's routing
        served = LeanRoutes(
            app,
            submit=guarded["/v1/tasks"],
            stream=guarded["/v1/tasks/{task_id}/stream"],
            handlers=EXCEPTION_HANDLERS,
            exact=lean,
        )
    return CorrelationId(
        BodyLimit(served, limits.max_body_bytes, limits.max_header_bytes), orch.tracing
    )
