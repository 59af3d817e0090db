"""Admin read endpoints for operators: status, task list, any task, sessions
(ORCH-5120..ORCH-5124).

``llorch status``, ``llorch top``, ``llorch tasks`` and ``llorch sessions``
read these; all of them need an ``admin`` key (the app puts them behind the
same guard as the rest of the control plane). A tenant key keeps seeing only
its own tasks through the data plane (ORCH-8005); these routes are how an
operator sees every tenant's. Documented in ``contracts/openapi/control.yaml``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Literal

import msgspec
from llama_orch.core.errors import InvalidParams, NotFound
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .control import ControlPlane
from .limits import TaskStream
from .service import Orchestrator
from .tasks import TaskRecord, TaskState

__all__ = [
    "OVERVIEW_ROUTES",
    "OverviewPool",
    "OverviewReplica",
    "OverviewTenant",
    "SessionEntry",
    "Status",
    "TaskEntry",
    "status_of",
]

_json = msgspec.json.Encoder()
_STATES: tuple[TaskState, ...] = ("queued", "running", "completed", "failed", "canceled")
MAX_LIST = 1000


class OverviewReplica(msgspec.Struct):
    replica_id: str
    status: str
    slots: int
    busy: int  # tasks running on it now
    restarts: int
    circuit_open: bool  # the breaker: no restart until a reset or reload
    backoff_ms: int
    last_error: str | None
    tokens_per_s: float  # summed decode rate of its running tasks


class OverviewPool(msgspec.Struct):
    pool_id: str
    engine: str
    model_ref: str
    draining: bool
    ready: bool
    queue_depth: int
    queue_capacity: int
    queued: dict[str, int]  # by priority
    running: int
    slots: int
    replicas: list[OverviewReplica]


class OverviewTenant(msgspec.Struct):
    tenant: str
    weight: int  # configured fair-share weight (ORCH-1110)
    queued: int
    running: int
    share: dict[str, float]  # admission share by priority (EWMA, ORCH-1113)


class Status(msgspec.Struct):
    accepting: bool
    pools: list[OverviewPool]
    tenants: list[OverviewTenant]
    tasks: dict[str, int]  # retained tasks by state


class TaskEntry(msgspec.Struct):
    task_id: str
    tenant: str
    state: str
    priority: str
    pool_id: str
    replica_id: str | None
    session_id: str | None
    queue_position: int | None
    tokens_out: int
    created_ms: int
    queue_wait_ms: int
    age_ms: int  # since admission


class SessionEntry(msgspec.Struct):
    tenant: str
    session_id: str
    turns: int
    tokens_in: int
    tokens_out: int
    ttl_ms_remaining: int
    replica_id: str | None


def _tokens_per_s(tasks: list[TaskRecord], now: float) -> float:
    rate = 0.0
    for t in tasks:
        if t.first_token is not None and t.tokens_out > 1 and now > t.first_token:
            rate += (t.tokens_out - 1) / (now - t.first_token)
    return round(rate, 2)


def status_of(orch: Orchestrator) -> Status:
    """One consistent snapshot (no await while it is taken)."""
    now = time.monotonic()
    active = orch.tasks.active()
    running_on: dict[str, list[TaskRecord]] = {}
    for t in active:
        if t.state == "running" and t.replica_id is not None:
            running_on.setdefault(t.replica_id, []).append(t)
    pools = []
    for pool in orch.pools.values():
        replicas = []
        for rid in sorted(pool.states):
            s = pool.states[rid]
            live = pool.replicas.get(rid)
            replicas.append(
                OverviewReplica(
                    replica_id=rid,
                    status=s.status,
                    slots=s.slots,
                    busy=live.busy if live is not None else 0,
                    restarts=s.restarts,
                    circuit_open=s.circuit_open,
                    backoff_ms=s.backoff_ms,
                    last_error=s.last_error,
                    tokens_per_s=_tokens_per_s(running_on.get(rid, []), now),
                )
            )
        queued = Counter(t.priority for t in pool.queue.queued())
        pools.append(
            OverviewPool(
                pool_id=pool.id,
                engine=pool.engine,
                model_ref=pool.config.model,
                draining=pool.draining,
                ready=bool(pool.ready_replicas()),
                queue_depth=len(pool.queue),
                queue_capacity=pool.admission.queue_capacity,
                queued=dict(sorted(queued.items())),
                running=pool.running(),
                slots=pool.total_slots(),
                replicas=replicas,
            )
        )
    sched = orch.config.scheduling
    queued_by: Counter[str] = Counter(t.tenant for t in active if t.state == "queued")
    running_by: Counter[str] = Counter(t.tenant for t in active if t.state == "running")
    shares: dict[str, dict[str, float]] = {}
    for tenant, priority, share in orch.shares.items():
        shares.setdefault(tenant, {})[priority] = round(share, 4)
    names = sorted(set(sched.tenants) | set(queued_by) | set(running_by) | set(shares))
    tenants = [
        OverviewTenant(
            tenant=name,
            weight=sched.tenants.get(name, sched.default_tenant).weight,
            queued=queued_by[name],
            running=running_by[name],
            share=dict(sorted(shares.get(name, {}).items())),
        )
        for name in names
    ]
    states = Counter(t.state for t in orch.tasks.records())
    return Status(
        accepting=orch.accepting,
        pools=pools,
        tenants=tenants,
        tasks={s: states[s] for s in _STATES},
    )


def _entry(orch: Orchestrator, rec: TaskRecord, now: float) -> TaskEntry:
    pool = orch.pools.get(rec.pool_id)
    position = pool.queue.position(rec) if pool is not None and rec.state == "queued" else None
    return TaskEntry(
        task_id=rec.task_id,
        tenant=rec.tenant,
        state=rec.state,
        priority=rec.priority,
        pool_id=rec.pool_id,
        replica_id=rec.replica_id,
        session_id=rec.session_id,
        queue_position=position,
        tokens_out=rec.tokens_out,
        created_ms=int(rec.created_wall * 1000),
        queue_wait_ms=rec.queue_wait_ms,
        age_ms=int((now - rec.created) * 1000),
    )


class _ListQuery(msgspec.Struct, forbid_unknown_fields=True):
    state: Literal["queued", "running", "completed", "failed", "canceled", "active"] | None = None
    tenant: str | None = None
    pool_id: str | None = None
    limit: int = 100


def _query(request: Request) -> _ListQuery:
    params: dict[str, Any] = dict(request.query_params)
    try:
        if "limit" in params:
            params["limit"] = int(params["limit"])
        query = msgspec.convert(params, _ListQuery)
    except (ValueError, msgspec.ValidationError) as exc:
        raise InvalidParams(f"bad query: {exc}") from exc
    if not 1 <= query.limit <= MAX_LIST:
        raise InvalidParams(f"limit must be in 1..{MAX_LIST} - at `$.limit`")
    return query


def _plane(request: Request) -> ControlPlane:
    plane = request.app.state.control
    assert isinstance(plane, ControlPlane)
    return plane


def record(orch: Orchestrator, request: Request) -> TaskRecord:
    task_id = request.path_params["task_id"]
    rec = orch.tasks.get(task_id)
    if rec is None:
        raise NotFound(f"unknown task {task_id}")
    return rec


async def status(request: Request) -> Response:
    orch = _plane(request).orch
    return Response(_json.encode(status_of(orch)), media_type="application/json")


async def list_tasks(request: Request) -> Response:
    orch = _plane(request).orch
    q = _query(request)
    now = time.monotonic()
    found = [
        t
        for t in orch.tasks.records()
        if (q.state is None or t.state == q.state or (q.state == "active" and not t.terminal))
        and (q.tenant is None or t.tenant == q.tenant)
        and (q.pool_id is None or t.pool_id == q.pool_id)
    ]
    found.sort(key=lambda t: t.created, reverse=True)  # newest first
    body = {"tasks": [_entry(orch, t, now) for t in found[: q.limit]], "total": len(found)}
    return Response(_json.encode(body), media_type="application/json")


async def show_task(request: Request) -> Response:
    orch = _plane(request).orch
    rec = record(orch, request)
    return Response(
        _json.encode(_entry(orch, rec, time.monotonic())), media_type="application/json"
    )


async def tail_task(request: Request) -> Response:
    plane = _plane(request)
    orch, streams = plane.orch, plane.admin_streams
    rec = record(orch, request)
    limits = orch.config.limits
    return TaskStream(
        rec.frames(0, limits.stream_chunk_bytes),
        task_id=rec.task_id,
        tenant=rec.tenant,
        counter=streams,
        stall_timeout_s=limits.stream_stall_timeout_s,
    )


async def cancel_task(request: Request) -> Response:
    orch = _plane(request).orch
    orch.cancel(record(orch, request).task_id)
    return Response(status_code=204)


async def list_sessions(request: Request) -> Response:
    orch = _plane(request).orch
    entries = [
        SessionEntry(
            tenant=s.key[0],
            session_id=s.key[1],
            turns=s.turns,
            tokens_in=s.tokens_in,
            tokens_out=s.tokens_out,
            ttl_ms_remaining=info.ttl_ms_remaining,
            replica_id=s.replica_id,
        )
        for s in orch.sessions.all()
        for info in (orch.sessions.info(s),)
    ]
    entries.sort(key=lambda e: (e.tenant, e.session_id))
    return Response(_json.encode({"sessions": entries}), media_type="application/json")


# Admin only (build_app wraps each in the ``admin`` guard); they read ``app.state.control``.
OVERVIEW_ROUTES = [
    Route("/v1/admin/status", status, methods=["GET"]),
    Route("/v1/admin/tasks", list_tasks, methods=["GET"]),
    Route("/v1/admin/tasks/{task_id}", show_task, methods=["GET"]),
    Route("/v1/admin/tasks/{task_id}/stream", tail_task, methods=["GET"]),
    Route("/v1/admin/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    Route("/v1/admin/sessions", list_sessions, methods=["GET"]),
]
