"""The catalog's HTTP surface, registration, trust at load and task routing
(ORCH-3310..3333, ``contracts/openapi/catalog.yaml``).

* Registration fetches the reference through pool-managerd's model sources
  into the host's content-addressed cache, checks the digest and the trust
  policy, and only then records an entry: a refusal leaves nothing behind.
* :meth:`CatalogService.provide` replaces the embedded pool manager's model
  provisioning: a catalog reference loads the entry's bytes with its digest
  pinned, and the trust policy is applied again before any engine starts.
* :meth:`CatalogService.pools_for` is admission's view: which pools serve the
  model a task names, with canary weights, deprecation and retirement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from llama_orch.core.catalog_config import CatalogConfig
from llama_orch.core.errors import (
    InvalidParams,
    OrchError,
    PoolUnavailable,
    PoolUnready,
    UntrustedArtifact,
)
from llama_orch.core.model_source_api import MalformedModelRef, split_model_ref
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .artifacts import ArtifactStore
from .catalog import DEPRECATION, LIFECYCLE, Catalog, Entry, LifecycleState, Name, Provenance, Tag
from .metrics import Metrics
from .trust import Signature, TrustPolicy, Verdict, log_verification

if TYPE_CHECKING:
    from llama_orch.core.replica import ReplicaState
    from llama_orch.pool_managerd.pool import PoolManager

    from .control import ControlPlane
    from .pool_control import PoolControls
    from .pools import Pool
    from .service import Orchestrator
    from .tasks import TaskRecord

__all__ = ["CATALOG_ROUTES", "CatalogService", "deprecation_headers"]

_json = msgspec.json.Encoder()
_log = logging.getLogger(__name__)
_jobs: set[asyncio.Task[None]] = set()  # streamed registrations running (ORCH-3375)
Digest = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class RegisterRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    ref: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    digest: Digest | None = None
    tags: list[Tag] = []
    signatures: list[Signature] = []
    license: str | None = None
    sbom: str | None = None
    chat_template: str | None = None
    ctx: Annotated[int, msgspec.Meta(ge=1)] | None = None
    format: str = "gguf"
    state: LifecycleState = "draft"


class StateRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    state: LifecycleState
    weight: Annotated[float, msgspec.Meta(gt=0, lt=1)] | None = None
    replacement: str | None = None
    drain_deadline_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 30_000
    reason: Annotated[str, msgspec.Meta(max_length=512)] = ""
    # deprecated: keep serving with Deprecation/Sunset headers this long (ORCH-3334)
    grace_ms: Annotated[int, msgspec.Meta(ge=0, le=90 * 86_400_000)] | None = None


class SwitchRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Promote or rollback: how long the reloaded pools' running tasks may finish
    on the version they started on (ORCH-3360)."""

    drain_deadline_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 30_000


class PoolSwitch(msgspec.Struct):
    """One pool reloaded by a promote or rollback (ORCH-3360)."""

    pool_id: str
    model_digest: str  # the digest its replicas serve now
    replicas: list[str]
    finished: int  # tasks that ran on the previous version and finished during the switch
    ended: int  # tasks ended with POOL_UNAVAILABLE at the drain deadline


class VerifyResult(msgspec.Struct):
    id: str
    digest: str
    result: str
    reason: str
    detail: str


class CatalogService:
    def __init__(self, config: CatalogConfig, metrics: Metrics) -> None:
        self.catalog = Catalog(config.path)
        self.artifacts = ArtifactStore(self.catalog.path, config.artifact_max_bytes)
        self.trust = TrustPolicy(config.trust)
        self._metrics = metrics
        self._watcher: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        metrics.gauge(
            "catalog_model_state",
            self._states,
            "1 for a catalog model version's lifecycle state, 0 for the others (ORCH-3365).",
        )

    async def share(self, store: object) -> None:
        """Keep the catalog in the shared state store when it offers one (the
        ``valkey`` backend), so every instance sees one catalog (ORCH-3383); a
        watcher reloads it as soon as another instance writes."""
        make = getattr(store, "catalog_backend", None)
        if make is None:
            return
        backend = make()
        await asyncio.to_thread(self.catalog.use, backend)
        _log.info("model catalog in the shared store at %s", backend.location)
        self._watcher = asyncio.create_task(self._watch(), name="catalog-watch")

    async def _watch(self) -> None:
        backend = self.catalog.backend
        loop = asyncio.get_running_loop()
        # its own thread: a wait that blocks for 0.5 s must not hold one of the
        # default executor's few threads
        failing = False
        with ThreadPoolExecutor(1, thread_name_prefix="catalog-watch") as thread:
            while not self._closing.is_set():
                try:
                    await loop.run_in_executor(thread, backend.wait_change, 0.5)
                    await loop.run_in_executor(thread, self.catalog.refresh)
                except Exception as exc:  # the store is down: keep serving what we hold
                    if not failing:  # once per outage
                        _log.warning("catalog watcher: %s; retrying every second", exc)
                    failing = True
                    await asyncio.sleep(1.0)
                else:
                    failing = False

    async def close(self) -> None:
        """Stop the watcher (woken from its wait in a worker thread), then the backend."""
        self._closing.set()
        if self._watcher is not None:
            with contextlib.suppress(Exception):  # a store already gone: the wait times out
                await asyncio.to_thread(self.catalog.backend.wake)
            await self._watcher
            self._watcher = None
        await asyncio.to_thread(self.catalog.backend.close)

    async def sync(self) -> None:
        """Read the backend's version before answering from memory (a write by another
        instance is seen at once, ORCH-3383)."""
        if self.catalog.backend.shared:
            await asyncio.to_thread(self.catalog.refresh)

    def _states(self) -> list[tuple[float, dict[str, str]]]:
        """One-hot lifecycle per entry (ORCH-3365): every version shows all five states."""
        return [
            (1.0 if e.state == s else 0.0, {"model_id": e.id, "lifecycle": s})
            for e in self.catalog.list()
            for s in LIFECYCLE
        ]

    # ------------------------------------------------------------------ trust

    def _count(self, verdict: Verdict, model: str, digest: str, engine: str, stage: str) -> None:
        self._metrics.catalog_verifications.add(
            1, {"result": verdict.result, "reason": verdict.reason, "engine": engine}
        )
        log_verification(model, digest, verdict, stage)

    def _refuse(self, model: str, digest: str, engine: str, stage: str, exc: Exception) -> None:
        verdict = Verdict("fail", "digest_mismatch", str(exc))
        self._count(verdict, model, digest, engine, stage)

    def register(self, req: RegisterRequest, progress: Callable[[str], None]) -> Entry:
        """Fetch, verify, record (blocking: run it in a thread)."""
        try:
            from llama_orch.pool_managerd.errors import ProvisionError, VerificationError
            from llama_orch.pool_managerd.sources import ModelCache, UnknownModelSource
        except ImportError as exc:  # pragma: no cover - orchestratord without [embedded]
            raise InvalidParams(
                "registering models needs llama-orch-pool-managerd (the [embedded] extra)"
            ) from exc
        try:
            source, _ = split_model_ref(req.ref)
        except MalformedModelRef as exc:
            raise InvalidParams(f"{exc} - at `$.ref`") from exc
        pre = self.trust.source_verdict(source)
        if pre is not None and pre.refused:  # before any byte moves (ORCH-3312)
            self._count(pre, req.name, req.digest or "", "none", "register")
            raise UntrustedArtifact(f"{req.ref}: {pre.detail}")
        try:
            got = ModelCache().fetch(
                req.ref, expected_sha256=req.digest, progress=progress, from_origin=True
            )
        except UnknownModelSource as exc:
            raise InvalidParams(f"{exc} - at `$.ref`") from exc
        except VerificationError as exc:
            self._refuse(req.name, req.digest or "", "none", "register", exc)
            raise UntrustedArtifact(str(exc)) from exc
        except ProvisionError as exc:
            self._count(Verdict("fail", "fetch_failed", str(exc)), req.name, "", "none", "register")
            raise InvalidParams(str(exc)) from exc
        verdict = self.trust.judge(source=got.source, digest=got.sha256, signatures=req.signatures)
        self._count(verdict, req.name, got.sha256, "none", "register")
        if verdict.refused:
            raise UntrustedArtifact(f"{req.name} ({got.sha256}): {verdict.detail}")
        entry = Entry(
            id=got.sha256[:16],
            name=req.name,
            tags=list(dict.fromkeys(req.tags)),
            digest=got.sha256,
            size=got.size,
            format=req.format,
            ref=req.ref,
            provenance=Provenance(
                got.source, got.meta.source_url, got.meta.version, got.meta.manifest_digest
            ),
            signatures=req.signatures,
            sbom=req.sbom,
            license=req.license or got.meta.license,
            chat_template=req.chat_template,
            ctx=req.ctx,
            state=req.state,
        )
        return self.catalog.add(entry)

    def judge_for_load(self, entry: Entry, engine: str) -> None:
        """Trust before a remote pool-managerd loads ``entry`` (ORCH-3381): the
        signature and source checks belong here, where the keys are; the bytes are
        checked against the digest where they are loaded. Raises UntrustedArtifact."""
        verdict = self.trust.judge(
            source=entry.provenance.source, digest=entry.digest, signatures=entry.signatures
        )
        self._count(verdict, entry.name, entry.digest, engine, "load")
        if verdict.refused:
            raise UntrustedArtifact(f"{entry.name} ({entry.id}): {verdict.detail}")

    def verify(self, entry: Entry, engine: str = "none", stage: str = "verify") -> Path:
        """Trust, then bytes (ORCH-3310, ORCH-3313); raises UntrustedArtifact."""
        from llama_orch.pool_managerd.errors import ProvisionError, VerificationError
        from llama_orch.pool_managerd.sources import ModelCache

        verdict = self.trust.judge(
            source=entry.provenance.source, digest=entry.digest, signatures=entry.signatures
        )
        if verdict.refused:
            self._count(verdict, entry.name, entry.digest, engine, stage)
            raise UntrustedArtifact(f"{entry.name} ({entry.id}): {verdict.detail}")
        try:
            got = ModelCache().fetch(entry.ref, expected_sha256=entry.digest)
        except VerificationError as exc:
            self._refuse(entry.name, entry.digest, engine, stage, exc)
            raise UntrustedArtifact(f"{entry.name} ({entry.id}): {exc}") from exc
        except ProvisionError as exc:
            verdict = Verdict("fail", "fetch_failed", str(exc))
            self._count(verdict, entry.name, entry.digest, engine, stage)
            raise InvalidParams(str(exc)) from exc
        self._count(verdict, entry.name, entry.digest, engine, stage)
        return got.path

    def provide(
        self, ref: str, *, engine: str, progress: Callable[[str], None]
    ) -> tuple[Path, str]:
        """The embedded pool manager's model provisioning (ORCH-3313: before load)."""
        from llama_orch.pool_managerd.errors import ProvisionError, VerificationError
        from llama_orch.pool_managerd.provision import provision_model

        entry = self.catalog.resolve(ref)
        if entry is not None:
            try:
                return self.verify(entry, engine, "load"), entry.digest
            except UntrustedArtifact as exc:  # never retried, never loaded
                raise VerificationError(str(exc)) from exc
            except InvalidParams as exc:  # the fetch failed: the pool retries it
                raise ProvisionError(str(exc)) from exc
        path, digest = provision_model(ref, progress=progress)
        if self.trust.mode == "off":
            return path, digest
        known = self.catalog.by_digest(digest)
        source = split_model_ref(ref)[0]
        verdict = self.trust.judge(
            source=source, digest=digest, signatures=known.signatures if known else []
        )
        self._count(verdict, ref, digest, engine, "load")
        if verdict.refused:
            raise VerificationError(f"{ref} ({digest}): {verdict.detail}")
        return path, digest

    # ------------------------------------------------------------------ routing

    def serves(self, pool: Pool, entry: Entry) -> bool:
        mine = self.catalog.resolve(pool.config.model)
        if mine is not None and mine.id == entry.id:
            return True
        return any(st.model_digest == entry.digest for st in pool.states.values())

    def version_of(self, pool: Pool, digest: str) -> Entry | None:
        """The catalog version a replica of ``pool`` serves: the entry of the digest
        it reports, else the entry its ``model:`` names (pools given by
        ``endpoints:`` report no digest)."""
        return (self.catalog.by_digest(digest) if digest else None) or self.catalog.resolve(
            pool.config.model
        )

    def task_ended(self, pool: Pool, replica: ReplicaState, rec: TaskRecord) -> None:
        """Per-version outcome, first-token latency and tokens of a task that ran on a
        replica (ORCH-3380); tasks on models outside the catalog are not counted here."""
        entry = self.version_of(pool, replica.model_digest or "")
        if entry is None or rec.state not in ("completed", "failed", "canceled"):
            return
        attrs = {"model_id": entry.id, "lifecycle": entry.state}
        self._metrics.catalog_tasks.add(1, {**attrs, "outcome": rec.state})
        if rec.first_token_ms is not None:
            self._metrics.catalog_first_token_ms.record(rec.first_token_ms, attrs)
        if rec.tokens_out:
            self._metrics.catalog_tokens_out.add(rec.tokens_out, attrs)

    def pools_for(
        self, model_ref: str, candidates: Sequence[Pool], *, override: bool = False
    ) -> list[Pool] | None:
        """Pools serving the entry a task for ``model_ref`` runs on, or None when
        ``model_ref`` is not a catalog reference (ORCH-3331, ORCH-3332, ORCH-3370)."""
        chosen = self.catalog.choose(model_ref, override=override)
        if chosen is None:
            return None
        pools = [p for p in candidates if self.serves(p, chosen)]
        if not pools and chosen.state == "canary":  # no canary pool yet: the Active serves
            active = self.catalog.active_of(chosen.name)
            if active is not None:
                chosen = active
                pools = [p for p in candidates if self.serves(p, chosen)]
        if pools:
            self._metrics.catalog_routed.add(1, {"model_id": chosen.id, "lifecycle": chosen.state})
        return pools


def deprecation_headers() -> dict[str, str]:
    """``Deprecation``/``Sunset`` for a task admitted in a grace period (ORCH-3334)."""
    e = DEPRECATION.get()
    if e is None:
        return {}
    since = next((h.at_ms for h in reversed(e.history) if h.to_state == "deprecated"), 0)
    headers = {"Deprecation": f"@{since // 1000}"}  # RFC 9745
    if e.grace_until_ms:  # an override past or without a grace period has no end date
        headers["Sunset"] = formatdate(e.grace_until_ms / 1000, usegmt=True)  # RFC 8594
    return headers


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
