"""The two policy call sites of orchestratord (ORCH-8520..8524, issue #16).

Admission runs once per submission, after validation and quotas and before
the queue push; placement runs once per dispatch, among the replicas the
built-in placement would accept. Neither is on the token path. The policy
host itself (``llama-orch-policy-host``, the ``policies`` extra) is imported
only when the config names a policy.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from llama_orch.core.api import TaskRequest
from llama_orch.core.config import Config
from llama_orch.core.errors import AdmissionRejected, Forbidden, InternalError, InvalidParams
from llama_orch.core.placement import Dispatch
from llama_orch.core.policy_config import HookConfig, PoliciesConfig, check_policies

from .metrics import Metrics
from .pools import Pool, Replica

if TYPE_CHECKING:
    from llama_orch.policy_host import PolicyHost

    from .admission import Admission, Prepared
    from .placer import Placer
    from .service import Orchestrator
    from .tasks import TaskRecord
    from .telemetry import EngineScraper
    from .workload import Workload

__all__ = [
    "PolicyReloadResult",
    "choose_replica",
    "make_policy_host",
    "reload_policies",
    "run_admission_policy",
]

_log = logging.getLogger("llama_orch.orchestratord")


class _Observer:
    """Feeds the host's counts into the daemon's metrics (ORCH-8542)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def call(self, policy: str, hook: str, outcome: str, ms: float) -> None:
        attrs = {"policy": policy, "hook": hook, "outcome": outcome}
        self.metrics.policy_calls.add(1, attrs)
        self.metrics.policy_decision_ms.record(ms, {"policy": policy, "hook": hook})

    def trap(self, policy: str, code: str) -> None:
        self.metrics.policy_traps.add(1, {"policy": policy, "code": code})


def make_policy_host(
    config: Config, metrics: Metrics, base_dir: Path | None = None
) -> PolicyHost | None:
    """A PolicyHost when the config names a hook policy, else None."""
    cfg = config.policies
    if cfg.admission is None and cfg.placement is None:
        return None
    try:
        from llama_orch.policy_host import PolicyHost
    except ImportError as exc:  # the optional extra is missing: a startup error
        raise InternalError(
            "config names policies but llama-orch-policy-host is not installed"
            " (pip install 'llama-orch-orchestratord[policies]')"
        ) from exc
    return PolicyHost(cfg, base_dir=base_dir, observer=_Observer(metrics))


def _task_info(req: TaskRequest, rec_or_prepared: Any, tenant: str, pool_id: str) -> Any:
    from llama_orch.policy_sdk.abi import TaskInfo

    request = rec_or_prepared.request
    return TaskInfo(
        task_id=request.task_id,
        tenant=tenant,
        priority=req.priority,
        workload=req.workload,
        pool_id=pool_id,
        max_tokens=request.max_tokens,
        prompt_tokens=getattr(rec_or_prepared, "prompt_tokens", None),
        session_id=str(req.session_id) if req.session_id else None,
        deadline_ms=req.deadline_ms,
    )


async def run_admission_policy(
    admission: Admission, req: TaskRequest, pool: Pool, prepared: Prepared, tenant: str
) -> tuple[TaskRequest, Pool, Prepared]:
    """Ask the admission policy (ORCH-8521); raise its rejection (ORCH-8522) or
    return the request, pool and prepared task with its rewrite applied."""
    from llama_orch.policy_sdk.abi import (
        AdmissionSnapshot,
        PoolLoad,
        Reject,
        Rewrite,
        SessionBudget,
        TenantBudget,
    )

    from .admission import backpressure, prepare

    host = admission.policies  # the caller checked that a policy host is configured
    if host is None or not host.has_admission:
        return req, pool, prepared
    tcfg = admission.quotas.tenant_config(tenant)
    running = sum(1 for r in admission.workload.running_on(pool.id) if r.tenant == tenant)
    pool_in_flight = pool.queue.tenant_depth(tenant) + running
    session = None
    if req.session_id is not None:
        s = admission.sessions.get((tenant, str(req.session_id)))
        if s is not None:
            tokens, _ms = admission.sessions.remaining(s)
            session = SessionBudget(
                session_id=str(req.session_id),
                turns=s.turns,
                max_turns=admission.sessions.max_turns,
                tokens_remaining=tokens,
            )
    snapshot = AdmissionSnapshot(
        task=_task_info(req, prepared, tenant, pool.id),
        pool=PoolLoad(
            pool_id=pool.id,
            queued=len(pool.queue),
            capacity=pool.queue.capacity,
            running=pool.running(),
            slots=pool.total_slots(),
            ready_replicas=len(pool.ready_replicas()),
        ),
        tenant=TenantBudget(
            tenant=tenant,
            in_flight=admission.tasks.in_flight(tenant),
            pool_in_flight=pool_in_flight,
            max_concurrent=tcfg.max_concurrent,
            bucket_tokens=admission.quotas.bucket_tokens(tenant, time.monotonic()),
        ),
        session=session,
        pools=sorted(admission.pools),
    )
    result = host.admission(snapshot)
    assert result is not None
    d = result.decision
    if isinstance(d, Reject):
        msg = f"rejected by policy {result.policy}: {d.reason}"
        if d.status == 403:
            raise Forbidden(msg, policy_label=result.policy, pool_id=pool.id, engine=pool.engine)
        retry = d.retry_after_ms
        if retry is None:
            retry = admission.workload.retry_after_ms(pool)  # ORCH-1957
        backpressure(admission.metrics, pool, "policy")
        raise AdmissionRejected(
            msg,
            policy_label=result.policy,
            pool_id=pool.id,
            engine=pool.engine,
            retry_after_ms=retry,
        )
    if isinstance(d, Rewrite):
        if d.pool_id is not None and d.pool_id != pool.id:
            pool = admission.pools[d.pool_id]  # the host checked it is one of snapshot.pools
            req = msgspec.structs.replace(
                req, pool_id=d.pool_id, task_id=uuid.UUID(prepared.task_id)
            )
            prepared = await prepare(req, pool, admission.limits)
        if d.priority is not None:
            req = msgspec.structs.replace(req, priority=d.priority)
        if d.max_tokens is not None and d.max_tokens < prepared.request.max_tokens:
            request = msgspec.structs.replace(prepared.request, max_tokens=d.max_tokens)
            prepared = msgspec.structs.replace(prepared, request=request)
    return req, pool, prepared


def choose_replica(
    host: PolicyHost,
    pool: Pool,
    rec: TaskRecord,
    step: Dispatch[Any],
    affinity: str | None,
    *,
    workload: Workload,
    scraper: EngineScraper,
    placer: Placer,
    free: Mapping[str, int] | None = None,
) -> Replica | None:
    """The replica the placement policy scores highest (ORCH-8523), the built-in
    choice when it scores none, or None when it failed closed. ``free``: the free
    slots per replica of the chosen set as a state store counts them (ORCH-2572),
    instead of this instance's own count."""
    from llama_orch.policy_sdk.abi import PlacementSnapshot, ReplicaInfo, TaskInfo

    if host.cfg.placement is None:
        return pool.replicas[step.replica_id]
    if free is None:
        free = {
            r.state.replica_id: r.free_slots
            for r in pool.replicas.values()
            if r.state.set_key() == step.set_key
        }
    eligible = [
        r
        for rid, n in free.items()
        if n > 0 and (r := pool.replicas.get(rid)) is not None and r.state.ready
    ]
    loads = {v.replica_id: v.load for v in workload.views(pool)}
    kv = {a.get("replica_id"): v for v, a in scraper.kv_usage() if a.get("pool_id") == pool.id}
    labels = host.cfg.replica_labels
    hits = placer.expected_hits(pool, rec)  # ORCH-2315
    infos = []
    for r in eligible:
        rid = r.state.replica_id
        # the replica's service-time model at its current load (ORCH-1950)
        busy = max(1, r.state.slots - free[rid])
        model = workload.model(pool, rid, r.state.slots)
        mpt = model.decode_ms_per_token(busy, time.monotonic())
        infos.append(
            ReplicaInfo(
                replica_id=rid,
                free_slots=free[rid],
                slots=r.state.slots,
                queued_tokens=max(0, loads.get(rid, 0)),
                ms_per_token=float(mpt) if mpt else None,
                kv_usage=kv.get(rid),
                session_pin=rid == affinity,
                labels=labels.get(rid, {}),
                prefix_hit_tokens=hits.get(rid, 0),
            )
        )
    snapshot = PlacementSnapshot(
        task=TaskInfo(
            task_id=rec.task_id,
            tenant=rec.tenant,
            priority=rec.priority,
            pool_id=pool.id,
            max_tokens=rec.request.max_tokens,
            prompt_tokens=rec.prompt_tokens if rec.prompt_counted else None,
            session_id=rec.session_id,
        ),
        replicas=infos,
    )
    result = host.placement(snapshot)
    assert result is not None
    if result.refused:
        return None
    if result.replica_id is None:
        return pool.replicas[step.replica_id]
    return pool.replicas[result.replica_id]


class LoadedPolicy(msgspec.Struct, frozen=True):
    name: str
    kind: str  # wasm | native
    sha256: str | None = None


class PolicyHookView(msgspec.Struct, frozen=True):
    policy: str
    on_error: str
    budget_ms: float


class PolicyReloadResult(msgspec.Struct, frozen=True):
    """The running set (ORCH-8572): loaded policies and the hook that calls each."""

    policies: list[LoadedPolicy]
    admission: PolicyHookView | None
    placement: PolicyHookView | None


def running_policies(orch: Orchestrator) -> PolicyReloadResult:
    """What ``GET /v1/policies`` answers, and ``POST /v1/policies/reload`` after a swap."""
    host = orch.policies
    loaded = [] if host is None else host.loaded()
    cfg = orch.config.policies

    def hook(h: HookConfig | None) -> PolicyHookView | None:
        if host is None or h is None:
            return None
        return PolicyHookView(h.policy, h.on_error, h.budget_ms)

    return PolicyReloadResult(
        [LoadedPolicy(n, k, s) for n, k, s in loaded], hook(cfg.admission), hook(cfg.placement)
    )


def reload_policies(orch: Orchestrator, cfg: PoliciesConfig) -> PolicyReloadResult:
    """Swap in ``cfg`` (ORCH-8570): the new set is loaded and verified completely
    first; on any failure the running set stays and InvalidParams says why."""
    try:
        check_policies(cfg)
        if cfg.admission is None and cfg.placement is None:
            old, orch.policies = orch.policies, None
            if old is not None:
                old.close()
        elif orch.policies is None:
            orch.policies = make_policy_host(
                msgspec.structs.replace(orch.config, policies=cfg), orch.metrics
            )
        else:
            orch.policies.reload(cfg)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid policies: {exc}") from exc
    except Exception as exc:
        from llama_orch.policy_host import PolicyError

        if isinstance(exc, PolicyError):
            raise InvalidParams(f"policies not reloaded, the running set stays: {exc}") from exc
        raise
    orch.config = msgspec.structs.replace(orch.config, policies=cfg)
    result = running_policies(orch)
    _log.info("policies reloaded: %s", [p.name for p in result.policies])
    return result
