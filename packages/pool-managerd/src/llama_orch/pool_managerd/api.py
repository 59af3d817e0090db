"""pool-managerd's authenticated HTTP API (ORCH-3021..3026).

Documented in ``contracts/openapi/pool-managerd.yaml``. orchestratord
subscribes to ``GET /v1/replicas/stream`` (newline-delimited JSON: a snapshot,
then every state change, and lease renewals in between) and sends drain,
reload and reset commands. Every request needs the shared bearer token; the
API is never served without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
from aiohttp import web
from llama_orch.core.config import PoolManagerdConfig
from llama_orch.core.errors import ErrorBody, ErrorCode
from llama_orch.core.registry import Lease, ReplicaChanged, Snapshot
from llama_orch.core.replica import ReplicaState

from .errors import PoolManagerError, ReloadError
from .pool import PoolManager

__all__ = ["TOKEN_ENV", "ApiError", "Registry", "build_api", "resolve_token"]

log = logging.getLogger("llama_orch.pool_managerd")
TOKEN_ENV = "LLAMA_ORCH_POOL_TOKEN"
LEASE_TTL_MS = (500, 60_000)  # bounds a consumer may ask for
_json = msgspec.json.Encoder()


def resolve_token(cfg: PoolManagerdConfig, environ: dict[str, str] | None = None) -> str | None:
    """The bearer token: ``token``, else ``token_file``'s contents, else the environment."""
    if cfg.token:
        return cfg.token
    if cfg.token_file:
        token = Path(cfg.token_file).read_text().strip()
        if not token:
            raise PoolManagerError(f"token_file {cfg.token_file} is empty")
        return token
    return (environ if environ is not None else os.environ).get(TOKEN_ENV) or None


# The one error envelope of every llama-orch API (ORCH-2001); kept under this name for
# pool-managerd's callers.
ApiError = ErrorBody


class DrainRequest(msgspec.Struct, forbid_unknown_fields=True):
    # How long the replicas stay ``draining`` before their engines stop.
    deadline_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 0


class ReloadRequest(msgspec.Struct, forbid_unknown_fields=True):
    new_model_ref: Annotated[str, msgspec.Meta(min_length=1)]
    model_digest: str | None = None
    # The old replicas stay ``draining`` until ``reload/drained`` or this deadline.
    drain_deadline_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 30_000


class PoolAction(msgspec.Struct):
    pool_id: str
    replicas: list[str]


class ReloadAnswer(msgspec.Struct):
    pool_id: str
    model_ref: str
    model_digest: str
    replicas: list[str]
    retired: list[str]
    drained_early: bool  # released by ``reload/drained`` before the deadline


class Released(msgspec.Struct):
    pool_id: str
    released: bool


class _Subscriber:
    def __init__(self, capacity: int) -> None:
        self.queue: asyncio.Queue[ReplicaState] = asyncio.Queue(capacity)
        self.overflowed = asyncio.Event()


class Registry:
    """Fans replica state changes out to every open stream."""

    def __init__(self, snapshot: Callable[[], list[ReplicaState]], *, capacity: int = 4096) -> None:
        self._snapshot = snapshot
        self._capacity = capacity
        self._subscribers: set[_Subscriber] = set()
        self.closed = asyncio.Event()  # set at shutdown: every stream ends

    def publish(self, state: ReplicaState) -> None:
        for sub in self._subscribers:
            try:
                sub.queue.put_nowait(state)
            except asyncio.QueueFull:
                sub.overflowed.set()  # ORCH-3022: disconnect rather than send a gap

    def snapshot(self) -> list[ReplicaState]:
        return self._snapshot()

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        sub = _Subscriber(self._capacity)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)


def _error(status: int, code: ErrorCode, message: str) -> web.Response:
    return web.Response(
        body=_json.encode(ErrorBody(code, message)),
        status=status,
        content_type="application/json",
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def _ok(body: object) -> web.Response:
    return web.Response(body=_json.encode(body), content_type="application/json")


class ApiState:
    """What the handlers act on: one per application (``request.app[STATE]``)."""

    def __init__(self, manager: PoolManager, registry: Registry, token: str) -> None:
        self.manager = manager
        self.registry = registry
        self.expected = token.encode()
        # reload of a pool waiting for its old replicas to drain → release event
        self.draining: dict[str, asyncio.Event] = {}


STATE = web.AppKey("llama_orch_pool_managerd_api", ApiState)


@web.middleware
async def authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest on every request, also for a wrong scheme: no timing hint.
    ok = hmac.compare_digest(given.strip().encode(), request.app[STATE].expected)
    if not ok or scheme.lower() != "bearer":
        return _error(401, ErrorCode.UNAUTHENTICATED, "missing or wrong bearer token")
    return await handler(request)


def _pool_of(request: web.Request) -> str:
    pid = request.match_info["pool_id"]
    if pid not in request.app[STATE].manager.pool_ids():
        raise web.HTTPNotFound(
            text=_json.encode(
                ErrorBody(ErrorCode.NOT_FOUND, f"pool {pid} is not managed here")
            ).decode(),
            content_type="application/json",
        )
    return pid


async def _decode(request: web.Request, typ: type[Any]) -> Any:
    try:
        return msgspec.json.decode((await request.read()) or b"{}", type=typ)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise web.HTTPBadRequest(
            text=_json.encode(ErrorBody(ErrorCode.INVALID_PARAMS, str(exc))).decode(),
            content_type="application/json",
        ) from exc


async def replicas(request: web.Request) -> web.Response:
    return _ok({"replicas": request.app[STATE].registry.snapshot()})


async def stream(request: web.Request) -> web.StreamResponse:
    registry = request.app[STATE].registry
    try:
        ttl_ms = int(request.query.get("lease_ttl_ms", "5000"))
    except ValueError:
        ttl_ms = -1
    if not LEASE_TTL_MS[0] <= ttl_ms <= LEASE_TTL_MS[1]:
        return _error(400, ErrorCode.INVALID_PARAMS, f"lease_ttl_ms must be in {LEASE_TTL_MS}")
    resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    resp.content_type = "application/x-ndjson"
    with registry.subscribe() as sub:  # before the snapshot: no change is lost
        await resp.prepare(request)
        first = Snapshot(lease_ttl_ms=ttl_ms, replicas=registry.snapshot())
        await resp.write(_json.encode(first) + b"\n")
        overflow = asyncio.ensure_future(sub.overflowed.wait())
        closed = asyncio.ensure_future(registry.closed.wait())
        nxt: asyncio.Future[ReplicaState] | None = None
        try:
            while True:
                nxt = asyncio.ensure_future(sub.queue.get())
                done, _ = await asyncio.wait(
                    {nxt, overflow, closed},
                    timeout=ttl_ms / 3000,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if overflow in done:
                    log.warning("registry stream consumer too slow: disconnected")
                    break
                states = [nxt.result()] if nxt in done else []
                nxt.cancel()  # a pending get would swallow the next state
                if closed in done:
                    # Shutdown: deliver what is queued (the ``stopped`` states)
                    # so the consumer need not wait for the lease to expire.
                    while not sub.queue.empty():
                        states.append(sub.queue.get_nowait())
                msgs: list[ReplicaChanged | Lease]
                msgs = [ReplicaChanged(lease_ttl_ms=ttl_ms, state=st) for st in states]
                for msg in msgs or [Lease(lease_ttl_ms=ttl_ms)]:
                    await resp.write(_json.encode(msg) + b"\n")
                if closed in done:
                    break
        except ConnectionError:
            pass  # the consumer went away
        finally:
            for fut in (overflow, closed, nxt):
                if fut is not None:
                    fut.cancel()
    return resp


async def drain(request: web.Request) -> web.Response:
    pid = _pool_of(request)
    req: DrainRequest = await _decode(request, DrainRequest)
    ids: list[str] = []

    async def wait(replica_ids: list[str]) -> None:  # the pool manager's drain callback
        ids.extend(replica_ids)
        await asyncio.sleep(req.deadline_ms / 1000)

    await request.app[STATE].manager.drain(pid, wait=wait)
    return _ok(PoolAction(pid, ids))


async def reload(request: web.Request) -> web.Response:
    st = request.app[STATE]
    pid = _pool_of(request)
    req: ReloadRequest = await _decode(request, ReloadRequest)
    retired: list[str] = []
    early: list[bool] = []

    async def wait(old_ids: list[str]) -> None:  # the pool manager's drain callback
        retired.extend(old_ids)
        if not old_ids:
            return  # nothing serves the old model: nothing to drain
        released = st.draining[pid] = asyncio.Event()
        try:
            async with asyncio.timeout(req.drain_deadline_ms / 1000):
                await released.wait()
            early.append(True)
        except TimeoutError:
            pass
        finally:
            st.draining.pop(pid, None)

    try:
        states = await st.manager.reload(
            pid, req.new_model_ref, expected_digest=req.model_digest, drain=wait
        )
    except ReloadError as exc:
        if exc.verification:
            return _error(403, ErrorCode.UNTRUSTED_ARTIFACT, str(exc))
        return _error(503, ErrorCode.POOL_UNREADY, str(exc))
    return _ok(
        ReloadAnswer(
            pool_id=pid,
            model_ref=req.new_model_ref,
            model_digest=states[0].model_digest if states else "",
            replicas=[s.replica_id for s in states],
            retired=retired,
            drained_early=bool(early),
        )
    )


async def drained(request: web.Request) -> web.Response:
    pid = _pool_of(request)
    event = request.app[STATE].draining.get(pid)
    if event is not None:
        event.set()
    return _ok(Released(pid, event is not None))


async def reset(request: web.Request) -> web.Response:
    pid = _pool_of(request)
    return _ok(PoolAction(pid, await request.app[STATE].manager.reset(pid)))


def build_api(manager: PoolManager, registry: Registry, token: str) -> web.Application:
    """The aiohttp application; ``token`` must be non-empty (ORCH-3021)."""
    if not token:
        raise PoolManagerError("the pool-managerd API is never served without a token")
    app = web.Application(middlewares=[authenticate])
    app[STATE] = ApiState(manager, registry, token)
    app.router.add_get("/v1/replicas", replicas)
    app.router.add_get("/v1/replicas/stream", stream)
    app.router.add_post("/v1/pools/{pool_id}/drain", drain)
    app.router.add_post("/v1/pools/{pool_id}/reload", reload)
    app.router.add_post("/v1/pools/{pool_id}/reload/drained", drained)
    app.router.add_post("/v1/pools/{pool_id}/reset", reset)
    return app
