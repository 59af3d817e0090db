"""The catalog as a service of orchestratord: registration, trust at load, task
routing and per-version metrics (ORCH-3310..3333, ORCH-3380..3383).

* Registration fetches the reference through pool-managerd's model sources
  into the host's content-addressed cache, checks the digest and the trust
  policy, and only then records an entry: a refusal leaves nothing behind.
* :meth:`CatalogService.provide` replaces the embedded pool manager's model
  provisioning: a catalog reference loads the entry's bytes with its digest
  pinned, and the trust policy is applied again before any engine starts.
* :meth:`CatalogService.pools_for` is admission's view: which pools serve the
  model a task names, with canary weights, deprecation and retirement.

Its HTTP surface is ``catalog_api.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
from llama_orch.core.catalog_config import CatalogConfig
from llama_orch.core.errors import (
    InvalidParams,
    UntrustedArtifact,
)
from llama_orch.core.model_source_api import MalformedModelRef, split_model_ref

from .artifacts import ArtifactStore
from .catalog import DEPRECATION, LIFECYCLE, Catalog, Entry, LifecycleState, Name, Provenance, Tag
from .metrics import Metrics
from .trust import Signature, TrustPolicy, Verdict, log_verification

if TYPE_CHECKING:
    from llama_orch.core.replica import ReplicaState

    from .pools import Pool
    from .tasks import TaskRecord

__all__ = [
    "CatalogService",
    "RegisterRequest",
    "StateRequest",
    "SwitchRequest",
    "deprecation_headers",
]

_log = logging.getLogger(__name__)
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
