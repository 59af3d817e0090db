"""What the store keeps of a task, and the admission rules an instance pushes to it
(ORCH-2521, ORCH-2522, ORCH-2592).

A task's :class:`~llama_orch.core.state_store.TaskSpec` carries the request as
opaque bytes: here they are a :class:`StoredTask`, everything another instance (or
this one after a restart) needs to run the task, report its status, or answer a
facade's retrieve of it (a response's own fields, ``note``).
"""

from __future__ import annotations

import time

import msgspec
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.config import Config
from llama_orch.core.state_store import PoolPolicy, StoreConfig, TaskSpec

from .tasks import TaskRecord

__all__ = ["StoredTask", "record_of", "spec_of", "store_config"]


class StoredTask(msgspec.Struct, frozen=True, kw_only=True):
    """What the store keeps of a task beyond its TaskSpec, to run it anywhere."""

    request: GenerateRequest
    engine: str
    prompt_tokens: int
    prompt_counted: bool
    expected_tokens: int | None = None
    cost_per_token: float = 0.0
    created_wall: float = 0.0
    session_id: str | None = None
    correlation_id: str | None = None
    trace: dict[str, str] | None = None  # the client's trace context (ORCH-7046)
    note: bytes | None = None  # what a facade keeps with the task (ORCH-2592)


_stored_decoder = msgspec.json.Decoder(StoredTask)


def store_config(config: Config) -> StoreConfig:
    """The admission rules this instance pushes to the store (ORCH-2521)."""
    sched, adm = config.scheduling, config.admission
    return StoreConfig(
        pools={
            p.id: PoolPolicy(
                capacity=adm.queue_capacity,
                full_policy=adm.full_policy,
                priority_weights=dict(sched.priority_weights),
            )
            for p in config.pools
        },
        tenants=dict(sched.tenants),
        default_tenant=sched.default_tenant,
        priorities=dict(sched.priority_limits),
        event_log_retention_ms=int(adm.event_log_retention_s * 1000),
        session_ttl_ms=config.sessions.ttl_ms,
    )


def spec_of(rec: TaskRecord) -> TaskSpec:
    stored = StoredTask(
        request=rec.request,
        engine=rec.engine,
        prompt_tokens=rec.prompt_tokens,
        prompt_counted=rec.prompt_counted,
        expected_tokens=rec.expected_tokens,
        cost_per_token=rec.cost_per_token,
        created_wall=rec.created_wall,
        session_id=rec.session_id,
        correlation_id=rec.correlation_id,
        trace=rec.trace_carrier,
        note=rec.note,
    )
    return TaskSpec(
        task_id=rec.task_id,
        pool=rec.pool_id,
        priority=rec.priority,
        tenant=rec.tenant,
        deadline_ms=None if rec.deadline is None else _epoch_ms(rec.deadline),
        session=f"{rec.tenant}/{rec.session_id}" if rec.session_id else None,
        request=msgspec.json.encode(stored),
    )


def record_of(spec: TaskSpec) -> TaskRecord:
    """A local record of a task admitted by any instance (after a restart, or elsewhere)."""
    stored = _stored_decoder.decode(spec.request)
    deadline = None
    if spec.deadline_ms is not None:
        deadline = time.monotonic() + (spec.deadline_ms - time.time() * 1000) / 1000
    return TaskRecord(
        task_id=spec.task_id,
        pool_id=spec.pool,
        engine=stored.engine,
        priority=spec.priority,
        request=stored.request,
        prompt_tokens=stored.prompt_tokens,
        prompt_counted=stored.prompt_counted,
        session_id=stored.session_id,
        tenant=spec.tenant,
        deadline=deadline,
        expected_tokens=stored.expected_tokens,
        cost_per_token=stored.cost_per_token,
        created_wall=stored.created_wall or time.time(),
        # the admission's time on this clock: queue_ttl counts from it (ORCH-2562)
        created=time.monotonic() - max(0.0, time.time() - stored.created_wall)
        if stored.created_wall
        else time.monotonic(),
        correlation_id=stored.correlation_id,
        trace_carrier=stored.trace,
        note=stored.note,
    )


def _epoch_ms(monotonic_deadline: float) -> int:
    return int((time.time() + monotonic_deadline - time.monotonic()) * 1000)
