"""OrchQueue v1 wire types (``contracts/openapi/data.yaml``).

Requests we accept forbid unknown fields and carry their constraints in their
types (ORCH-1001); responses and SSE events are plain structs; SSE payloads
form a tagged union keyed by the SSE ``event:`` name (ORCH-1201).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .config import FullPolicy, Priority
from .errors import ErrorCode
from .replica import ReplicaState

__all__ = [
    "API_VERSION",
    "Capabilities",
    "ChatMessage",
    "EmbeddingEvent",
    "EndEvent",
    "ErrorEvent",
    "Limits",
    "MetricsEvent",
    "PoolCapability",
    "PoolHealth",
    "QueuedEvent",
    "SelfTestCheck",
    "SelfTestReport",
    "SessionInfo",
    "StartedEvent",
    "StreamEvent",
    "TaskAccepted",
    "TaskRequest",
    "TaskStatus",
    "TokenEvent",
    "TokenLogprob",
    "derive_seed",
]

API_VERSION = "0.2.0"

Workload = Literal["completion", "chat", "embedding"]


class ChatMessage(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Meta(max_length=1_000_000)]


class TaskRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    task_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    workload: Workload = "completion"
    pool_id: str | None = None
    model_ref: str | None = None
    engine: str | None = None
    ctx: Annotated[int, Meta(ge=1)] | None = None
    priority: Priority = "interactive"
    seed: Annotated[int, Meta(ge=0, le=2**32 - 2)] | None = None
    determinism: Literal["strict", "best_effort"] = "best_effort"
    sampler_profile_version: str | None = None
    prompt: Annotated[str, Meta(max_length=1_000_000)] | None = None
    messages: list[ChatMessage] | None = None
    # ORCH-1011: the texts an `embedding` task embeds, one vector each, in order
    inputs: (
        Annotated[
            list[Annotated[str, Meta(min_length=1, max_length=1_000_000)]],
            Meta(min_length=1, max_length=2048),
        ]
        | None
    ) = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    deadline_ms: Annotated[int, Meta(ge=1)] | None = None
    expected_tokens: Annotated[int, Meta(ge=1)] | None = None
    kv_hint: Literal["reuse", "cold"] | None = None
    temperature: Annotated[float, Meta(ge=0, le=5)] = 0.0
    top_p: Annotated[float, Meta(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Meta(ge=0)] = 0
    min_p: Annotated[float, Meta(ge=0, le=1)] = 0.0
    repeat_penalty: Annotated[float, Meta(gt=0)] = 1.0
    stop: Annotated[list[str], Meta(max_length=8)] = []
    # ORCH-1010: a GBNF grammar the output must follow, for pools whose engine
    # declares the `grammar` capability (llama.cpp); 400 elsewhere.
    grammar: Annotated[str, Meta(min_length=1, max_length=16_384)] | None = None
    # ORCH-3370: run a Deprecated catalog model anyway (issue #18)
    override: bool = False


class TaskAccepted(msgspec.Struct, omit_defaults=True):
    task_id: str
    queue_position: int
    predicted_start_ms: int
    backoff_ms: int
    predicted_finish_ms: int | None = None  # ORCH-1957


class QueuedEvent(msgspec.Struct, tag="queued", kw_only=True, omit_defaults=True):
    """A queued task's place in serving order and forecast start (ORCH-1961) and
    finish (ORCH-2907)."""

    queue_position: int
    predicted_start_ms: int  # from now
    predicted_finish_ms: int | None = None  # from now (ORCH-2907)


class StartedEvent(msgspec.Struct, tag="started", kw_only=True):
    queue_position: int
    predicted_start_ms: int
    queue_wait_ms: int
    pool_id: str
    replica_id: str
    engine: str
    engine_version: str
    model_digest: str


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One generated token's log-probability and, when asked, the most likely
    alternatives at its position (ORCH-9201)."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top: list[TokenLogprob] = []


class TokenEvent(msgspec.Struct, tag="token", omit_defaults=True):
    t: str
    i: int
    # Log-probabilities of the tokens behind ``t``, only for a task that asked for
    # them through a frontend (ORCH-9201); absent otherwise.
    lp: list[TokenLogprob] | None = None


class EmbeddingEvent(msgspec.Struct, tag="embedding", kw_only=True):
    """One input's vector of an `embedding` task, in input order (ORCH-1013)."""

    index: int
    vector: list[float]


class MetricsEvent(msgspec.Struct, tag="metrics", kw_only=True, omit_defaults=True):
    queue_depth: int | None = None
    tokens_out: int | None = None
    tokens_per_s: float | None = None
    kv_warmth: bool | None = None
    on_time_probability: float | None = None
    preempted: bool | None = None
    resumed: bool | None = None  # continued by another instance after a takeover (ORCH-2530)
    migrated: bool | None = None  # moved to another replica mid-stream (ORCH-2331)
    budget_tokens_remaining: int | None = None
    budget_time_ms_remaining: int | None = None
    budget_cost_remaining: float | None = None
    # a running task's forecast finish, ms from now, when it moved (ORCH-2907)
    predicted_finish_ms: int | None = None


class EndEvent(msgspec.Struct, tag="end", kw_only=True):
    tokens_out: int
    decode_ms: int
    reason: Literal["eos", "stop", "length", "canceled"]
    tokens_in: int = 0
    queue_wait_ms: int = 0
    first_token_ms: int | None = None


class ErrorEvent(msgspec.Struct, tag="error", kw_only=True, omit_defaults=True):
    code: ErrorCode
    message: str
    engine: str | None = None
    pool_id: str | None = None
    retriable: bool | None = None
    retry_after_ms: int | None = None  # when a retry can expect to be admitted (ORCH-1966)


StreamEvent = (
    QueuedEvent | StartedEvent | TokenEvent | EmbeddingEvent | MetricsEvent | EndEvent | ErrorEvent
)


class SessionInfo(msgspec.Struct, kw_only=True):
    session_id: str
    ttl_ms_remaining: int
    turns: int
    max_turns: int
    kv_bytes: int
    kv_warmth: bool
    tokens_in: int
    tokens_out: int


class TaskStatus(msgspec.Struct, kw_only=True):
    task_id: str
    state: Literal["queued", "running", "completed", "failed", "canceled"]
    pool_id: str
    replica_id: str | None
    queue_position: int | None
    tokens_out: int
    created_ms: int


class PoolCapability(msgspec.Struct, kw_only=True):
    id: str
    engine: str
    model_ref: str
    ctx_max: int
    slots: int
    replicas_ready: int
    # the sha256 of what the Ready replicas serve: one, or two while a reload switches
    # (ORCH-3382)
    model_digests: list[str] = []


class Limits(msgspec.Struct, kw_only=True):
    queue_capacity: int
    full_policy: FullPolicy
    max_tokens_limit: int


class StateStoreInfo(msgspec.Struct, kw_only=True):
    """The shared state store this instance uses (ORCH-2532)."""

    backend: str
    instance_id: str
    instances: list[str] = []  # every live instance by heartbeat, this one included (ORCH-2543)


class SelfTestCheck(msgspec.Struct, kw_only=True):
    """One startup self-test step of a replica (ORCH-7050)."""

    name: Literal["preload", "decode", "cancel", "telemetry"]
    ok: bool
    detail: str
    duration_ms: int


class SelfTestReport(msgspec.Struct, kw_only=True):
    """The startup self-tests of one replica, in order; the first failure ends them."""

    pool_id: str
    replica_id: str
    passed: bool
    checks: list[SelfTestCheck]
    at_ms: int  # wall clock when the checks began, ms since the epoch


class Capabilities(msgspec.Struct, kw_only=True):
    api_version: str
    engines: list[str]
    workloads: list[Workload]
    cpu_inference: bool
    allow_cpu_inference: bool
    pools: list[PoolCapability]
    limits: Limits
    features: list[str]
    self_tests: list[SelfTestReport] = []
    state_store: StateStoreInfo | None = None  # None: tasks live in this process only


class PoolHealth(msgspec.Struct, kw_only=True):
    pool_id: str
    live: bool
    ready: bool
    draining: bool
    last_error: str | None
    queue_depth: int
    replicas: list[ReplicaState]


def derive_seed(task_id: int) -> int:
    """Default seed when the client gives none: stable per task, from its ID's 128-bit
    number (``UUID.int``) (ORCH-1003)."""
    return task_id % (2**31 - 1)
