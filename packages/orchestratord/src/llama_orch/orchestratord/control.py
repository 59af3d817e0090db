"""Control plane: drain with a deadline, atomic reload, breaker reset, replica sets
(ORCH-1604..1606, ORCH-3025, ORCH-3026).

Documented in ``contracts/openapi/control.yaml``. Drain and reload act on the
orchestrator's view (admission, placement, running tasks) and, for pools the
embedded pool manager or remote pool-managerds run, on the engines themselves. Tasks still running
when a deadline passes end with one typed ``POOL_UNAVAILABLE`` error event
(retriable), never silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from llama_orch.core.errors import InvalidParams, NotFound
from llama_orch.core.policy_config import PoliciesConfig
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .limits import StreamCounter
from .policies import reload_policies, running_policies
from .pool_control import DrainResult, PoolControls, drain_tasks
from .pools import Pool
from .service import Orchestrator

__all__ = [
    "CONTROL_ROUTES",
    "ControlPlane",
    "DrainResult",
    "ReloadResult",
    "ReplicaSet",
    "ResetResult",
    "drain_tasks",
]

_json = msgspec.json.Encoder()


class DrainRequest(msgspec.Struct, forbid_unknown_fields=True):
    deadline_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 30_000


class ReloadRequest(msgspec.Struct, forbid_unknown_fields=True):
    new_model_ref: Annotated[str, msgspec.Meta(min_length=1)]
    model_digest: str | None = None  # expected sha256; a mismatch rolls back
    drain_deadline_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 30_000


class ReloadResult(msgspec.Struct):
    pool_id: str
    model_ref: str
    model_digest: str
    replicas: list[str]
    drain: DrainResult


class ResetResult(msgspec.Struct):
    pool_id: str
    replicas: list[str]  # replicas whose open circuit was reset (restarting now)


class ReplicaSet(msgspec.Struct):
    engine: str
    model_digest: str
    ctx: int
    engine_version: str
    sampler_profile_version: str
    pool_ids: list[str]
    replicas: list[str]
    slots: int
    busy: int
    load: float  # busy / slots
    queued: int  # tasks queued in the pools this set serves


def _decode(body: bytes, typ: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=typ)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidParams(str(exc)) from exc


@dataclass(frozen=True)
class ControlPlane:
    """What the control-plane endpoints act on; ``app.state.control`` (set by
    ``build_app``)."""

    orch: Orchestrator
    pools: PoolControls
    # operators' tails of tasks; they do not count against a tenant's streams
    admin_streams: StreamCounter = field(default_factory=StreamCounter)


def _plane(request: Request) -> ControlPlane:
    plane = request.app.state.control
    assert isinstance(plane, ControlPlane)
    return plane


def _pool(plane: ControlPlane, request: Request) -> Pool:
    pid = request.path_params["pool_id"]
    pool = plane.orch.pools.get(pid)
    if pool is None:
        raise NotFound(f"unknown pool {pid}")
    return pool


def _ok(body: object) -> Response:
    return Response(_json.encode(body), 200, media_type="application/json")


async def drain(request: Request) -> Response:
    """ORCH-1604: admission refuses the pool at once; running tasks finish until the
    deadline; the engines stop where this side runs them."""
    plane = _plane(request)
    pool = _pool(plane, request)
    req: DrainRequest = _decode(await request.body(), DrainRequest)
    pool.draining = True
    control = plane.pools.for_pool(pool)
    return _ok(await control.drain(plane.orch, pool, req.deadline_ms / 1000))


async def reload(request: Request) -> Response:
    """ORCH-1605, ORCH-3025: switch the pool to another model atomically."""
    plane = _plane(request)
    pool = _pool(plane, request)
    req: ReloadRequest = _decode(await request.body(), ReloadRequest)
    control = plane.pools.for_pool(pool)
    done = await control.reload(
        plane.orch, pool, req.new_model_ref, req.model_digest, req.drain_deadline_ms / 1000
    )
    pool.config = msgspec.structs.replace(pool.config, model=req.new_model_ref)
    return _ok(
        ReloadResult(pool.id, req.new_model_ref, done.model_digest, done.replicas, done.drain)
    )


async def reset(request: Request) -> Response:
    """ORCH-3026: restart the replicas whose circuit breaker is open."""
    plane = _plane(request)
    pool = _pool(plane, request)
    return _ok(ResetResult(pool.id, await plane.pools.for_pool(pool).reset(pool)))


async def replicasets(request: Request) -> Response:
    """ORCH-1606: Ready replicas grouped by replica-set key, with load."""
    orch = _plane(request).orch
    sets: dict[Any, ReplicaSet] = {}
    for pool in orch.pools.values():
        for rid in sorted(pool.replicas):
            replica = pool.replicas[rid]
            if not replica.state.ready:
                continue
            key = replica.state.set_key()
            rs = sets.get(key)
            if rs is None:
                rs = sets[key] = ReplicaSet(
                    key.engine, key.model_digest, key.ctx, key.engine_version,
                    key.sampler_profile_version, [], [], 0, 0, 0.0, 0,
                )  # fmt: skip
            if pool.id not in rs.pool_ids:
                rs.pool_ids.append(pool.id)
                rs.queued += len(pool.queue)
            rs.replicas.append(rid)
            rs.slots += replica.state.slots
            rs.busy += replica.busy
    for rs in sets.values():
        rs.load = round(rs.busy / rs.slots, 4) if rs.slots else 0.0
    return _ok({"replica_sets": list(sets.values())})


async def reload_policies_route(request: Request) -> Response:
    """ORCH-8570: swap the policies atomically; a failure keeps the running set."""
    body = await request.body()
    if not body.strip():
        raise InvalidParams("the body is the `policies` section (JSON); `{}` turns them off")
    cfg = _decode(body, PoliciesConfig)
    return _ok(reload_policies(_plane(request).orch, cfg))


async def policies_route(request: Request) -> Response:
    """ORCH-8572: the running policies and the hook that calls each."""
    return _ok(running_policies(_plane(request).orch))


# Admin only (build_app guards them); they read ``app.state.control``.
CONTROL_ROUTES = [
    Route("/v1/policies", policies_route, methods=["GET"]),
    Route("/v1/policies/reload", reload_policies_route, methods=["POST"]),
    Route("/v1/pools/{pool_id}/drain", drain, methods=["POST"]),
    Route("/v1/pools/{pool_id}/reload", reload, methods=["POST"]),
    Route("/v1/pools/{pool_id}/reset", reset, methods=["POST"]),
    Route("/v1/replicasets", replicasets, methods=["GET"]),
]
