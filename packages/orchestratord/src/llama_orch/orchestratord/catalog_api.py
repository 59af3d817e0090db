"""The catalog's HTTP surface (``contracts/openapi/catalog.yaml``): registration
(streamed progress, ORCH-3375), verify, lifecycle state, promote and rollback with
the pools that follow a name; the service behind it is ``catalog_service.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
from llama_orch.core.errors import (
    InvalidParams,
    OrchError,
    PoolUnavailable,
    PoolUnready,
    UntrustedArtifact,
)
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .catalog import Entry
from .catalog_service import (
    CatalogService,
    PoolSwitch,
    RegisterRequest,
    StateRequest,
    SwitchRequest,
    VerifyResult,
)

if TYPE_CHECKING:
    from llama_orch.pool_managerd.pool import PoolManager

    from .control import ControlPlane
    from .pool_control import PoolControls
    from .pools import Pool
    from .service import Orchestrator

__all__ = ["CATALOG_ROUTES"]

_json = msgspec.json.Encoder()
_log = logging.getLogger(__name__)
_jobs: set[asyncio.Task[None]] = set()  # streamed registrations running (ORCH-3375)


class RegisterProgress(msgspec.Struct):
    """One ``progress`` event of a streamed registration (ORCH-3375)."""

    message: str
    done_bytes: int | None
    total_bytes: int | None


def _sse(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _json.encode(data) + b"\n\n"


def _register_stream(svc: CatalogService, req: RegisterRequest) -> Response:
    """Registration as a stream of ``progress`` events and one ``registered`` or
    ``error`` event (ORCH-3375). The registration runs to its end even when the
    client goes away: what it records (or refuses) does not depend on a reader."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[bytes | None] = asyncio.Queue()

    def progress(msg: str) -> None:  # called in the worker thread
        data = RegisterProgress(
            str(msg), getattr(msg, "done_bytes", None), getattr(msg, "total_bytes", None)
        )
        loop.call_soon_threadsafe(events.put_nowait, _sse("progress", data))

    async def run() -> None:
        try:
            entry = await asyncio.to_thread(svc.register, req, progress)
            events.put_nowait(_sse("registered", entry))
        except OrchError as exc:
            body = msgspec.to_builtins(exc.body())
            events.put_nowait(_sse("error", {**body, "status": exc.status_code}))
        except Exception as exc:  # the stream must still end with one event
            _log.exception("registration of %s failed", req.ref)
            events.put_nowait(
                _sse("error", {"code": "INTERNAL", "message": str(exc), "status": 500})
            )
        events.put_nowait(None)

    job = asyncio.create_task(run(), name=f"register-{req.name}")
    _jobs.add(job)  # held until done, whether or not a client still reads
    job.add_done_callback(_jobs.discard)

    async def body() -> AsyncIterator[bytes]:
        while (frame := await events.get()) is not None:
            yield frame
        await job

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


def _decode(body: bytes, typ: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body or b"{}", type=typ)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidParams(str(exc)) from exc


def _ok(body: object, status: int = 200) -> Response:
    return Response(_json.encode(body), status, media_type="application/json")


def _plane(request: Request) -> ControlPlane:
    from .control import ControlPlane  # imports the service, which imports this module

    plane = request.app.state.control
    assert isinstance(plane, ControlPlane)
    return plane


async def models(request: Request) -> Response:
    svc = _plane(request).orch.catalog
    await svc.sync()
    if request.method == "GET":
        return _ok({"models": svc.catalog.list()})
    req: RegisterRequest = _decode(await request.body(), RegisterRequest)
    if "text/event-stream" in request.headers.get("accept", ""):
        return _register_stream(svc, req)  # ORCH-3375
    entry = await asyncio.to_thread(svc.register, req, lambda _m: None)
    return _ok(entry, 201)


async def model(request: Request) -> Response:
    svc = _plane(request).orch.catalog
    mid = request.path_params["model_id"]
    await svc.sync()
    if request.method == "DELETE":
        await asyncio.to_thread(svc.catalog.delete, mid)
        return Response(status_code=204)
    return _ok(svc.catalog.get(mid))


async def verify(request: Request) -> Response:
    svc = _plane(request).orch.catalog
    await svc.sync()
    entry = svc.catalog.get(request.path_params["model_id"])
    try:
        await asyncio.to_thread(svc.verify, entry)
    except UntrustedArtifact as exc:
        return _ok(VerifyResult(entry.id, entry.digest, "fail", "refused", str(exc)), 403)
    verdict = svc.trust.judge(
        source=entry.provenance.source, digest=entry.digest, signatures=entry.signatures
    )
    return _ok(VerifyResult(entry.id, entry.digest, verdict.result, verdict.reason, verdict.detail))


async def state(request: Request) -> Response:
    plane = _plane(request)
    orch = plane.orch
    manager = plane.pools.manager
    svc = plane.orch.catalog
    mid = request.path_params["model_id"]
    req: StateRequest = _decode(await request.body(), StateRequest)
    entry = await asyncio.to_thread(
        svc.catalog.transition,
        mid,
        req.state,
        weight=req.weight,
        replacement=req.replacement,
        reason=req.reason,
        grace_ms=req.grace_ms,
    )
    drained: list[str] = []
    if req.state == "retired":  # ORCH-3332: its pools drain by the deadline
        drained = await _drain_serving(orch, manager, entry, req.drain_deadline_ms / 1000)
    return _ok({"model": entry, "drained_pools": drained})


async def promote(request: Request) -> Response:
    plane = _plane(request)
    orch = plane.orch
    svc = plane.orch.catalog
    mid = request.path_params["model_id"]
    req: SwitchRequest = _decode(await request.body(), SwitchRequest)
    await svc.sync()
    entry = svc.catalog.get(mid)
    if entry.state != "canary":  # refused before any engine starts
        raise InvalidParams(f"{entry.id} is {entry.state}: only a canary is promoted")
    switched = await _switch_followers(orch, plane.pools, entry, req.drain_deadline_ms / 1000)
    return _ok({"models": await asyncio.to_thread(svc.catalog.promote, mid), "reloaded": switched})


async def rollback(request: Request) -> Response:
    plane = _plane(request)
    orch = plane.orch
    svc = plane.orch.catalog
    mid = request.path_params["model_id"]
    req: SwitchRequest = _decode(await request.body(), SwitchRequest)
    await svc.sync()
    entry = svc.catalog.get(mid)
    back = svc.catalog.rollback_target(entry)  # raises when there is nothing to undo
    switched: list[PoolSwitch] = []
    if back is not None:
        switched = await _switch_followers(orch, plane.pools, back, req.drain_deadline_ms / 1000)
    return _ok({"models": await asyncio.to_thread(svc.catalog.rollback, mid), "reloaded": switched})


# Admin only (build_app wraps each in the ``admin`` guard); they read ``app.state.control``.
CATALOG_ROUTES = [
    Route("/v1/catalog/models", models, methods=["GET", "POST"]),
    Route("/v1/catalog/models/{model_id}", model, methods=["GET", "DELETE"]),
    Route("/v1/catalog/models/{model_id}/verify", verify, methods=["POST"]),
    Route("/v1/catalog/models/{model_id}/state", state, methods=["POST"]),
    Route("/v1/catalog/models/{model_id}/promote", promote, methods=["POST"]),
    Route("/v1/catalog/models/{model_id}/rollback", rollback, methods=["POST"]),
]


def followers(orch: Orchestrator, controls: PoolControls, name: str) -> list[Pool]:
    """Pools that serve a model by its bare name, run by the embedded pool manager
    or by remote pool-managerds: they follow its Active version (ORCH-3360,
    ORCH-3381). A pool pinned to a tag, id or digest keeps the version it names."""
    from .pool_control import EmbeddedPools, RemotePools

    return [
        p
        for p in orch.pools.values()
        if p.config.model == name and isinstance(controls.for_pool(p), EmbeddedPools | RemotePools)
    ]


async def _switch_followers(
    orch: Orchestrator, controls: PoolControls, target: Entry, deadline_s: float
) -> list[PoolSwitch]:
    """Reload every follower of ``target.name`` to ``target``'s bytes, before the
    catalog changes (ORCH-3360): the pool manager's reload starts the new replicas
    beside the old ones, switches placement once they are Ready, lets the running
    tasks finish on the old ones and stops them; queued ones wait for the new
    ones. A remote pool-managerd gets the entry's source reference and digest; the
    trust policy is applied here, the digest there, both before an engine starts
    (ORCH-3381). A reload that fails leaves its pool serving as before, puts back
    the pools already switched, and the catalog is not changed."""
    from .pool_control import RemotePools  # imports the service, which imports this

    svc = orch.catalog
    # (pool, the reference and digest it served before)
    done: list[tuple[Pool, str, str]] = []
    switched: list[PoolSwitch] = []

    async def reload(pool: Pool, ref: str, digest: str) -> PoolSwitch:
        control = controls.for_pool(pool)
        if isinstance(control, RemotePools):
            entry = svc.catalog.by_digest(digest)
            if entry is not None:
                svc.judge_for_load(entry, pool.engine)  # raises UntrustedArtifact
                ref = entry.ref
        r = await control.reload(orch, pool, ref, digest, deadline_s)
        return PoolSwitch(pool.id, r.model_digest, r.replicas, r.drain.finished, r.drain.ended)

    for pool in followers(orch, controls, target.name):
        serving = {st.model_digest for st in pool.states.values() if st.ready}
        if serving == {target.digest}:
            continue  # already there
        ready = [st for st in pool.states.values() if st.ready]
        before = (ready[0].model_ref, ready[0].model_digest) if ready else ("", "")
        try:
            switched.append(await reload(pool, f"sha256:{target.digest}", target.digest))
        except (UntrustedArtifact, PoolUnready, PoolUnavailable):  # it serves as before
            for prev_pool, prev_ref, prev_digest in reversed(done):
                if prev_digest:
                    with contextlib.suppress(UntrustedArtifact, PoolUnready, PoolUnavailable):
                        # a catalog version by its digest; else what the replicas loaded
                        known = svc.catalog.by_digest(prev_digest) is not None
                        back = f"sha256:{prev_digest}" if known or not prev_ref else prev_ref
                        await reload(prev_pool, back, prev_digest)
            raise
        done.append((pool, *before))
    return switched


async def _drain_serving(
    orch: Orchestrator, manager: PoolManager | None, entry: Entry, deadline_s: float
) -> list[str]:
    from .pool_control import drain_tasks  # imports the service, which imports this

    pools = [p for p in orch.pools.values() if orch.catalog.serves(p, entry)]

    async def one(pool: Pool) -> None:
        pool.draining = True

        async def wait(ids: list[str]) -> None:
            await drain_tasks(orch, pool, deadline_s)

        if manager is not None and pool.id in manager.pool_ids():
            await manager.drain(pool.id, wait=wait)
        else:
            await wait([])

    await asyncio.gather(*(one(p) for p in pools))
    return [p.id for p in pools]
