"""Control plane: drain with a deadline, atomic reload, breaker reset, replica sets
(ORCH-1604..1606, ORCH-3025, ORCH-3026).

Documented in ``contracts/openapi/control.yaml``. Drain and reload act on the
orchestrator's view (admission, placement, running tasks) and, for pools the
embedded pool manager or remote pool-managerds run, on the engines themselves. Tasks still running
when a deadline passes end with one typed ``POOL_UNAVAILABLE`` error event
(retriable), never silently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from llama_orch.core.errors import (
    InvalidParams,
    NotFound,
    PoolUnavailable,
    PoolUnready,
    UntrustedArtifact,
)
from llama_orch.core.policy_config import PoliciesConfig
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .policies import reload_policies, running_policies
from .pools import Pool
from .remote import RemotePoolManagerClient
from .service import Orchestrator

if TYPE_CHECKING:
    from llama_orch.pool_managerd.pool import PoolManager

__all__ = [
    "DrainResult",
    "ReloadResult",
    "ReplicaSet",
    "ResetResult",
    "control_routes",
    "drain_tasks",
]

_json = msgspec.json.Encoder()


class DrainRequest(msgspec.Struct, forbid_unknown_fields=True):
    deadline_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 30_000


class ReloadRequest(msgspec.Struct, forbid_unknown_fields=True):
    new_model_ref: Annotated[str, msgspec.Meta(min_length=1)]
    model_digest: str | None = None  # expected sha256; a mismatch rolls back
    drain_deadline_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 30_000


class DrainResult(msgspec.Struct):
    pool_id: str
    finished: int  # running tasks that finished before the deadline
    ended: int  # tasks ended with POOL_UNAVAILABLE at the deadline
    waited_ms: int


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


async def drain_tasks(
    orch: Orchestrator,
    pool: Pool,
    deadline_s: float,
    *,
    replica_ids: list[str] | None = None,
) -> DrainResult:
    """Let running tasks (on ``replica_ids``, or the whole pool) finish until the
    deadline, then end what remains with ``POOL_UNAVAILABLE``. A whole-pool
    drain also ends the queued tasks at the deadline (ORCH-1604)."""
    started = time.monotonic()
    deadline = started + deadline_s

    def mine() -> list[Any]:
        return [
            t
            for t in orch.tasks.active()
            if t.pool_id == pool.id
            and (
                (replica_ids is None and t.state in ("queued", "running"))
                or (t.state == "running" and replica_ids and t.replica_id in replica_ids)
            )
        ]

    initial = {t.task_id for t in mine() if t.state == "running"}

    def settled() -> bool:
        left = mine()
        # a whole-pool drain stops waiting when only queued tasks are left: they
        # are never placed on a draining pool
        return not left or (replica_ids is None and all(t.state == "queued" for t in left))

    await orch.tasks.wait_for(settled, deadline - time.monotonic())  # ORCH-2413: no polling
    ended = 0
    runners = []
    for rec in mine():
        if rec.runner is not None:
            runners.append(rec.runner)
        orch.end(rec, orch.error_event(rec, f"pool {pool.id} drain deadline reached"))  # ORCH-2411
        ended += 1
    # Let the cancelled runners close their engine connections before the
    # engines are stopped: llama-server holds off SIGTERM while a stream is
    # open (measured: 10 s until SIGKILL), but exits at once without one.
    if runners:
        await asyncio.wait(runners, timeout=5.0)
    finished = sum(
        1 for tid in initial if (t := orch.tasks.get(tid)) is not None and t.state == "completed"
    )
    return DrainResult(pool.id, finished, ended, int((time.monotonic() - started) * 1000))


def control_routes(
    orch: Orchestrator,
    manager: PoolManager | None = None,
    remotes: Sequence[RemotePoolManagerClient] = (),
) -> list[Route]:
    def pool_of(request: Request) -> Pool:
        pid = request.path_params["pool_id"]
        pool = orch.pools.get(pid)
        if pool is None:
            raise NotFound(f"unknown pool {pid}")
        return pool

    def managed(pool: Pool) -> bool:
        return manager is not None and pool.id in manager.pool_ids()

    def remote(pool: Pool) -> list[RemotePoolManagerClient]:
        return [r for r in remotes if r.serves(pool.id)]

    def not_here(pool: Pool, what: str) -> PoolUnavailable:
        return PoolUnavailable(
            f"pool {pool.id} is not run by the embedded pool manager nor a configured "
            f"pool-managerd; {what} it where its engines run",
            pool_id=pool.id,
        )

    async def drain(request: Request) -> Response:
        pool = pool_of(request)
        req: DrainRequest = _decode(await request.body(), DrainRequest)
        pool.draining = True  # admission refuses new tasks at once
        result: list[DrainResult] = []

        async def wait(ids: list[str]) -> None:
            result.append(await drain_tasks(orch, pool, req.deadline_ms / 1000))

        if managed(pool):
            assert manager is not None
            await manager.drain(pool.id, wait=wait)
        else:
            for state in list(pool.states.values()):
                if state.status in ("ready", "starting"):
                    orch.on_replica_change(msgspec.structs.replace(state, status="draining"))
            await wait([])
            # Remote pool-managerds stop the engines once the tasks are done
            # (ORCH-3025); one that does not answer does not spare the others.
            outcomes = await asyncio.gather(
                *(client.drain(pool.id) for client in remote(pool)), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        return Response(_json.encode(result[0]), 200, media_type="application/json")

    async def reload(request: Request) -> Response:
        from llama_orch.pool_managerd.errors import ReloadError

        pool = pool_of(request)
        req: ReloadRequest = _decode(await request.body(), ReloadRequest)
        if remote(pool):
            return await reload_remote(pool, req)
        if not managed(pool):
            raise not_here(pool, "reload")
        assert manager is not None
        drained: list[DrainResult] = []

        async def wait(ids: list[str]) -> None:
            drained.append(
                await drain_tasks(orch, pool, req.drain_deadline_ms / 1000, replica_ids=ids)
            )

        try:
            states = await manager.reload(
                pool.id, req.new_model_ref, expected_digest=req.model_digest, drain=wait
            )
        except ReloadError as exc:
            if exc.verification:
                raise UntrustedArtifact(str(exc), pool_id=pool.id) from exc
            raise PoolUnready(str(exc), pool_id=pool.id) from exc
        pool.config = msgspec.structs.replace(pool.config, model=req.new_model_ref)
        pool.draining = False
        body = ReloadResult(
            pool_id=pool.id,
            model_ref=req.new_model_ref,
            model_digest=states[0].model_digest if states else "",
            replicas=[s.replica_id for s in states],
            drain=drained[0] if drained else DrainResult(pool.id, 0, 0, 0),
        )
        return Response(_json.encode(body), 200, media_type="application/json")

    async def reload_remote(pool: Pool, req: ReloadRequest) -> Response:
        """One pool-managerd after the other, so the others keep serving (ORCH-3025)."""
        deadline_s = req.drain_deadline_ms / 1000
        new: list[str] = []
        digest = ""
        drained = DrainResult(pool.id, 0, 0, 0)
        for client in remote(pool):
            old = client.replica_ids(pool.id)
            job = asyncio.create_task(
                client.reload(pool.id, req.new_model_ref, req.model_digest, req.drain_deadline_ms)
            )
            # The switch shows on the stream: old replicas turn draining.
            while not job.done() and any(
                client.status(rid) not in ("draining", "stopped", "failed") for rid in old
            ):
                await asyncio.sleep(0.05)
            if old and not job.done():
                part = await drain_tasks(orch, pool, deadline_s, replica_ids=old)
                drained = DrainResult(
                    pool.id,
                    drained.finished + part.finished,
                    drained.ended + part.ended,
                    drained.waited_ms + part.waited_ms,
                )
                await client.drained(pool.id)
            doc = await job  # a refusal or rollback raises its typed error
            new += doc["replicas"]
            digest = doc["model_digest"]
        pool.config = msgspec.structs.replace(pool.config, model=req.new_model_ref)
        pool.draining = False
        for client in remote(pool):
            client.republish(pool.id)  # replicas held as draining while the pool was
        body = ReloadResult(pool.id, req.new_model_ref, digest, new, drained)
        return Response(_json.encode(body), 200, media_type="application/json")

    async def reset(request: Request) -> Response:
        pool = pool_of(request)
        ids: list[str] = []
        if managed(pool):
            assert manager is not None
            ids = await manager.reset(pool.id)
        elif remote(pool):
            for client in remote(pool):
                ids += await client.reset(pool.id)
        else:
            raise not_here(pool, "reset")
        return Response(_json.encode(ResetResult(pool.id, ids)), 200, media_type="application/json")

    async def replicasets(request: Request) -> Response:
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
        return Response(
            _json.encode({"replica_sets": list(sets.values())}), 200, media_type="application/json"
        )

    async def reload_policies_route(request: Request) -> Response:
        """ORCH-8570: swap the policies atomically; a failure keeps the running set."""
        body = await request.body()
        if not body.strip():
            raise InvalidParams("the body is the `policies` section (JSON); `{}` turns them off")
        cfg = _decode(body, PoliciesConfig)
        result = reload_policies(orch, cfg)
        return Response(_json.encode(result), 200, media_type="application/json")

    async def policies_route(request: Request) -> Response:
        """ORCH-8572: the running policies and the hook that calls each."""
        return Response(_json.encode(running_policies(orch)), 200, media_type="application/json")

    return [
        Route("/v1/policies", policies_route, methods=["GET"]),
        Route("/v1/policies/reload", reload_policies_route, methods=["POST"]),
        Route("/v1/pools/{pool_id}/drain", drain, methods=["POST"]),
        Route("/v1/pools/{pool_id}/reload", reload, methods=["POST"]),
        Route("/v1/pools/{pool_id}/reset", reset, methods=["POST"]),
        Route("/v1/replicasets", replicasets, methods=["GET"]),
    ]
