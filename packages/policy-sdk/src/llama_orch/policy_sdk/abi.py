"""The policy ABI v1: what a policy receives and what it must answer (ORCH-8501..8512).

A policy decides at one of two *hooks*, never on the token path (ORCH-8520):

- ``admission``: an :class:`AdmissionSnapshot` in, an :data:`AdmissionDecision`
  out (:class:`Admit`, :class:`Reject` or :class:`Rewrite`, tagged by ``action``);
- ``placement``: a :class:`PlacementSnapshot` in, a :class:`PlacementDecision`
  (a score per replica) out.

Both kinds of policy implement the same protocol. A WebAssembly core module
exports, with the C names of ``c/llorch_policy.h``:

==========================================  =============================================
``memory``                                  its linear memory
``llorch_abi_version() -> i32``             :data:`ABI_VERSION`
``llorch_alloc(len: i32) -> i32``           a buffer of ``len`` bytes for the snapshot (0: none)
``llorch_decide(hook, ptr, len) -> i64``    decision JSON as ``(out_ptr << 32) | out_len``
``_initialize`` (optional)                  reactor start-up, called once per instance
==========================================  =============================================

``hook`` is :data:`HOOK_IDS` of the hook name. The snapshot buffer belongs
to the module from the ``llorch_decide`` call on (it may free or reuse it);
the decision bytes must stay valid until the module's next call. A module
imports nothing, except the host functions of namespace ``llorch`` that the
operator grants (:data:`HOST_IMPORTS`) and WASI when the config says so.

A native policy is a Python class registered in the entry-point group
``llama_orch.policies`` (ORCH-0006) that subclasses :class:`NativePolicy`.
Snapshots and decisions are JSON; decoding is strict: an unknown field, a
missing field or a wrong type is a typed error (:func:`decode_decision`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

import msgspec
from llama_orch.core.config import Priority
from msgspec import Meta

__all__ = [
    "ABI_VERSION",
    "DECISION_TYPES",
    "ENTRY_POINT_GROUP",
    "HOOKS",
    "HOOK_IDS",
    "HOST_IMPORTS",
    "SNAPSHOT_TYPES",
    "AdmissionDecision",
    "AdmissionSnapshot",
    "Admit",
    "Decision",
    "DecisionError",
    "Hook",
    "NativePolicy",
    "PlacementDecision",
    "PlacementSnapshot",
    "PoolLoad",
    "Reject",
    "ReplicaInfo",
    "Rewrite",
    "SessionBudget",
    "Snapshot",
    "TaskInfo",
    "TenantBudget",
    "decode_decision",
    "decode_snapshot",
    "encode",
]

ABI_VERSION = 1
ENTRY_POINT_GROUP = "llama_orch.policies"
Hook = Literal["admission", "placement"]
HOOKS: tuple[Hook, ...] = ("admission", "placement")
HOOK_IDS: dict[str, int] = {"admission": 1, "placement": 2}
# Host functions a module may import from namespace "llorch", each only when granted.
HOST_IMPORTS: dict[str, str] = {
    "log": "log(ptr: i32, len: i32): one line to the host's log, at most 1 KiB",
    "now_ms": "now_ms() -> i64: wall clock in ms (granted with `clock: true`)",
    "fetch": "fetch(url_ptr, url_len, out_ptr, out_cap: i32) -> i32: mediated fetch",
}

NonNeg = Annotated[int, Meta(ge=0)]
Name = Annotated[str, Meta(max_length=256)]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=False):
    pass


class TaskInfo(_Strict, kw_only=True):
    """The task being admitted or placed."""

    task_id: Name
    tenant: Name
    priority: Priority
    workload: Literal["completion", "chat", "embedding"] | None = None  # None at placement
    pool_id: Name
    max_tokens: NonNeg
    prompt_tokens: NonNeg | None = None  # None: not counted (short prompt)
    session_id: Name | None = None
    deadline_ms: NonNeg | None = None


class PoolLoad(_Strict, kw_only=True):
    """The task's pool: queue depth and capacity, running work and slots."""

    pool_id: Name
    queued: NonNeg
    capacity: NonNeg
    running: NonNeg
    slots: NonNeg  # free + busy slots of the Ready replicas
    ready_replicas: NonNeg


class TenantBudget(_Strict, kw_only=True):
    """The tenant's bucket and in-flight count (ORCH-1114)."""

    tenant: Name
    in_flight: NonNeg  # queued + running, all pools
    pool_in_flight: NonNeg  # queued + running in this pool
    max_concurrent: NonNeg | None = None
    bucket_tokens: float | None = None  # tokens left in its rps bucket, None: unlimited


class SessionBudget(_Strict, kw_only=True):
    session_id: Name
    turns: NonNeg
    max_turns: NonNeg
    tokens_remaining: int | None = None


class AdmissionSnapshot(_Strict, kw_only=True):
    abi: int = ABI_VERSION
    hook: Literal["admission"] = "admission"
    task: TaskInfo
    pool: PoolLoad
    tenant: TenantBudget
    session: SessionBudget | None = None
    pools: list[Name] = []  # the pools a rewrite may move the task to


class ReplicaInfo(_Strict, kw_only=True):
    """One eligible Ready replica with at least one free slot."""

    replica_id: Name
    free_slots: NonNeg
    slots: NonNeg
    queued_tokens: NonNeg  # remaining tokens of the work running on it
    ms_per_token: float | None = None  # measured decode speed, None: no sample yet
    kv_usage: float | None = None  # 0..1 from the engine, None: unknown
    session_pin: bool = False  # the task's session ran here last (KV warm)
    labels: dict[str, str] = {}
    # Expected prompt tokens this replica holds in its prefix cache, from the
    # orchestrator's prefix index (ORCH-2315); 0 when unknown or none.
    prefix_hit_tokens: NonNeg = 0


class PlacementSnapshot(_Strict, kw_only=True):
    abi: int = ABI_VERSION
    hook: Literal["placement"] = "placement"
    task: TaskInfo
    replicas: list[ReplicaInfo]


class Admit(_Strict, kw_only=True, tag="admit", tag_field="action"):
    reason: Name | None = None


class Reject(_Strict, kw_only=True, tag="reject", tag_field="action"):
    """Refuse the task: 429 (retry later, with ``retry_after_ms``) or 403 (never)."""

    reason: Annotated[str, Meta(min_length=1, max_length=256)]
    retry_after_ms: Annotated[int, Meta(ge=0, le=3_600_000)] | None = None
    status: Literal[429, 403] = 429


class Rewrite(_Strict, kw_only=True, tag="rewrite", tag_field="action"):
    """Admit with changes; a field left out is unchanged."""

    priority: Priority | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    pool_id: Name | None = None
    reason: Name | None = None


AdmissionDecision = Admit | Reject | Rewrite


class PlacementDecision(_Strict, kw_only=True):
    """A score per replica; the host picks the highest among the eligible ones
    it sent and ignores any other id (hard constraints stay the host's)."""

    scores: dict[Name, float]


Snapshot = AdmissionSnapshot | PlacementSnapshot
Decision = Admit | Reject | Rewrite | PlacementDecision
SNAPSHOT_TYPES: dict[str, Any] = {"admission": AdmissionSnapshot, "placement": PlacementSnapshot}
DECISION_TYPES: dict[str, Any] = {"admission": AdmissionDecision, "placement": PlacementDecision}

_encoder = msgspec.json.Encoder()
_snapshot_decoders = {h: msgspec.json.Decoder(t) for h, t in SNAPSHOT_TYPES.items()}
_decision_decoders = {h: msgspec.json.Decoder(t) for h, t in DECISION_TYPES.items()}


class DecisionError(ValueError):
    """A policy's output is not a valid decision for its hook (ORCH-8504)."""


def encode(value: Snapshot | Decision) -> bytes:
    return _encoder.encode(value)


def decode_snapshot(hook: str, data: bytes) -> Snapshot:
    # one decoder per hook, each of its own snapshot type: a dict cannot say which
    return cast(Snapshot, _snapshot_decoders[hook].decode(data))


def decode_decision(hook: str, data: bytes) -> Decision:
    """Strictly decode a decision (ORCH-8504); raises :class:`DecisionError`."""
    try:
        # one decoder per hook, each of its own decision type: a dict cannot say which
        return cast(Decision, _decision_decoders[hook].decode(data))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise DecisionError(f"invalid {hook} decision: {exc}") from exc


class NativePolicy:
    """Base class of a native Python policy (entry-point group ``llama_orch.policies``).

    ``config`` is the ``config`` mapping of the policy's entry in the
    daemon's ``policies.modules``. Override :meth:`decide`; it must return
    a decision of the hook's type and should be fast and free of I/O.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def decide(self, hook: Hook, snapshot: Snapshot) -> Decision:
        raise NotImplementedError
