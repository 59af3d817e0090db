"""Admission: validate a submission and turn it into a queued task (ORCH-1001..1107).

Checks run in this order, and nothing is enqueued unless all pass:
body schema (msgspec) → pool resolution → pool has a Ready replica →
``ctx`` ≤ model limit → ``max_tokens`` ≤ limit → prompt rendered (chat
template for ``chat``) and counted with the engine's tokenizer → prompt +
max_tokens ≤ ctx → session turn budget → queue push (full policy).
"""

from __future__ import annotations

import hashlib
import math
import time
import weakref
from typing import TYPE_CHECKING, Any

import msgspec
from llama_orch.core.adapter_api import Capability, GenerateRequest, WorkerAdapter
from llama_orch.core.api import TaskAccepted, TaskRequest, derive_seed
from llama_orch.core.config import AdmissionConfig
from llama_orch.core.errors import (
    AdmissionRejected,
    InvalidParams,
    OrchError,
    PoolUnavailable,
    PoolUnready,
)
from llama_orch.core.eta import Job
from llama_orch.core.placement import choose_set
from llama_orch.core.queue import DEFAULT_TENANT, PRIORITIES, Displaced
from llama_orch.core.quota import Quotas, TenantBusy

from ._promise import keep_told_start
from .forecast_pass import tenant_wait_ms
from .ids import new_task_id
from .metrics import Metrics
from .policies import run_admission_policy
from .pools import Pool
from .sessions import SessionTable
from .tasks import TaskRecord, TaskStore
from .tracing import CORRELATION_ID, TRACE_CARRIER, Tracing
from .workload import Workload

if TYPE_CHECKING:
    from llama_orch.policy_host import PolicyHost

    from .catalog_service import CatalogService
    from .stored import StoreBridge

__all__ = [
    "Admission",
    "Prepared",
    "backpressure",
    "decode_request",
    "displace",
    "prepare",
    "resolve_pool",
]

_decoder = msgspec.json.Decoder(TaskRequest)


def decode_request(body: bytes) -> TaskRequest:
    """Decode the body; the error names the offending field (ORCH-1001)."""
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid task request: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidParams(f"request body is not valid JSON: {exc}") from exc
    if req.workload == "embedding":
        _check_embedding(req)
    elif req.inputs is not None:
        raise InvalidParams("`inputs` is only for workload `embedding` - at `$.inputs`")
    if req.workload == "completion" and req.prompt is None:
        raise InvalidParams("`prompt` is required for workload `completion` - at `$.prompt`")
    if req.workload == "chat" and not req.messages:
        raise InvalidParams("`messages` is required for workload `chat` - at `$.messages`")
    if req.prompt is not None and req.messages is not None:
        raise InvalidParams("give either `prompt` or `messages`, not both - at `$.messages`")
    return req


def _check_embedding(req: TaskRequest) -> None:
    """ORCH-1011: an embedding task carries `inputs` and nothing meant for generation."""
    if req.inputs is None:
        raise InvalidParams("`inputs` is required for workload `embedding` - at `$.inputs`")
    for name in ("prompt", "messages", "grammar", "max_tokens", "session_id"):
        if getattr(req, name) is not None:
            raise InvalidParams(f"`{name}` does not apply to workload `embedding` - at `$.{name}`")


_capabilities: weakref.WeakKeyDictionary[WorkerAdapter, frozenset[Capability]] = (
    weakref.WeakKeyDictionary()
)


def known_capabilities(adapter: WorkerAdapter) -> frozenset[Capability] | None:
    """What an adapter declared when it was last asked; None when never asked."""
    return _capabilities.get(adapter)


async def capabilities(adapter: WorkerAdapter) -> frozenset[Capability]:
    """What an adapter declares, asked once per adapter (a replica's engine process)."""
    caps = _capabilities.get(adapter)
    if caps is None:
        caps = _capabilities[adapter] = (await adapter.props()).capabilities
    return caps


def resolve_pool(req: TaskRequest, pools: dict[str, Pool], catalog: Any = None) -> Pool:
    if req.pool_id is not None:
        pool = pools.get(req.pool_id)
        if pool is None:
            raise InvalidParams(f"unknown pool_id {req.pool_id!r} - at `$.pool_id`")
        candidates = [pool]
    else:
        candidates = list(pools.values())
    if req.engine is not None:
        candidates = [p for p in candidates if p.engine == req.engine]
    if req.model_ref is not None:
        # a catalog name, tag or digest picks its version's pools (ORCH-3322, ORCH-3331)
        served = (
            catalog.pools_for(req.model_ref, candidates, override=req.override)  # ORCH-3370
            if catalog is not None
            else None
        )
        if served is None:
            served = [p for p in candidates if p.config.model == req.model_ref]
        candidates = served
    if not candidates:
        raise InvalidParams("no pool serves the requested engine/model_ref - at `$.model_ref`")
    # Prefer a pool that can serve now; among those, the shortest queue.
    return min(candidates, key=lambda p: (not p.ready_replicas(), len(p.queue)))


# ORCH-1118: a token covers at least one byte; BOS/EOS and a tokenizer's
# dummy-prefix token are the only ones that cover none.
SPECIAL_TOKENS_MARGIN = 16


class Prepared(msgspec.Struct, frozen=True):
    task_id: str
    request: GenerateRequest
    prompt_tokens: int | None  # None: bounded by bytes, not counted (ORCH-1118)
    ctx: int


async def prepare(req: TaskRequest, pool: Pool, limits: AdmissionConfig) -> Prepared:
    """Everything that needs the engine (tokenizer, chat template), ORCH-1002, ORCH-1118."""
    adapter = pool.any_adapter()
    if adapter is None:
        raise PoolUnready(
            f"pool {pool.id} has no Ready replica yet",
            pool_id=pool.id,
            engine=pool.engine,
            retry_after_ms=1000,
        )
    ctx_max = pool.ctx_max()
    if req.ctx is not None and req.ctx > ctx_max:
        raise InvalidParams(
            f"ctx {req.ctx} exceeds the model limit {ctx_max} of pool {pool.id} - at `$.ctx`",
            pool_id=pool.id,
            engine=pool.engine,
        )
    ctx = req.ctx or ctx_max
    embedding = req.workload == "embedding"
    try:
        caps = await capabilities(adapter)
    except OrchError:
        if embedding or req.grammar is not None:
            raise  # the answer depends on them
        caps = frozenset()  # an engine that cannot answer now: the dispatch will tell
    if embedding and Capability.EMBED not in caps:  # ORCH-1012
        raise InvalidParams(
            f"the engine of pool {pool.id} ({pool.engine}) serves no embeddings - at `$.workload`",
            pool_id=pool.id,
            engine=pool.engine,
        )
    if not embedding and Capability.EMBED_ONLY in caps:
        raise InvalidParams(
            f"the engine of pool {pool.id} only embeds: use workload `embedding` - at `$.workload`",
            pool_id=pool.id,
            engine=pool.engine,
        )
    # an embedding is one prefill: one nominal token for the forecasts (ORCH-1011)
    max_tokens = 1 if embedding else req.max_tokens or min(limits.default_max_tokens, ctx)
    if max_tokens > limits.max_tokens_limit:
        raise InvalidParams(
            f"max_tokens {max_tokens} exceeds the limit {limits.max_tokens_limit}"
            " - at `$.max_tokens`"
        )
    inputs: tuple[str, ...] = ()
    if embedding:
        assert req.inputs is not None
        inputs = tuple(req.inputs)
        for i, text in enumerate(inputs):  # each input fits the context (ORCH-1011)
            if len(text.encode()) + SPECIAL_TOKENS_MARGIN > ctx:
                n = len(await adapter.tokenize(text))
                if n > ctx:
                    raise InvalidParams(
                        f"input {i} ({n} tokens) exceeds ctx {ctx} - at `$.inputs[{i}]`",
                        pool_id=pool.id,
                        engine=pool.engine,
                    )
        prompt = "\n".join(inputs)
    elif req.workload == "chat":
        assert req.messages is not None
        prompt = await adapter.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in req.messages]
        )
    else:
        assert req.prompt is not None
        prompt = req.prompt
    if embedding or (
        req.session_id is None and len(prompt.encode()) + SPECIAL_TOKENS_MARGIN + max_tokens <= ctx
    ):
        prompt_tokens: int | None = None  # fits whatever the count: skip the round trip
    else:
        prompt_tokens = len(await adapter.tokenize(prompt))
    if prompt_tokens is not None and prompt_tokens + max_tokens > ctx:
        raise InvalidParams(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds ctx {ctx}"
            " - at `$.max_tokens`",
            pool_id=pool.id,
            engine=pool.engine,
        )
    if req.grammar is not None and Capability.GRAMMAR not in caps:
        raise InvalidParams(
            f"`grammar` is not supported by the engine of pool {pool.id} ({pool.engine})"
            " - at `$.grammar`",
            pool_id=pool.id,
            engine=pool.engine,
        )
    # one str for the record and the request (issue #20: memory per task)
    if req.task_id is not None:
        task_id, number = str(req.task_id), req.task_id.int
    else:
        task_id, number = new_task_id()  # ORCH-2806: uuid4's text without a UUID object
    seed = req.seed if req.seed is not None else derive_seed(number)
    gen = GenerateRequest(
        task_id=task_id,
        prompt=prompt,
        max_tokens=max_tokens,
        seed=seed,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        repeat_penalty=req.repeat_penalty,
        stop=tuple(req.stop),
        # KV reuse can change logits: strict determinism turns it off.
        cache_prompt=req.determinism != "strict" and req.kv_hint != "cold",
        grammar=req.grammar,
        inputs=inputs,
    )
    return Prepared(task_id, gen, prompt_tokens, ctx)


def backpressure(metrics: Metrics, pool: Pool, policy: str | None = None) -> None:
    """Count one refusal for a full queue, a quota or a policy (ORCH-1108)."""
    metrics.backpressure.add(
        1, {"engine": pool.engine, "pool_id": pool.id, "policy": policy or pool.queue.policy}
    )


def displace(
    metrics: Metrics, pool: Pool, displaced: list[Displaced[TaskRecord]], priority: str
) -> None:
    """Every task a full-queue policy pushes out gets its terminal error (ORCH-1106)
    and counts as rejected (ORCH-1108); pushed out for a more urgent task, it counts
    as a soft preemption (ORCH-1904)."""
    for victim in displaced:
        backpressure(metrics, pool)
        metrics.tasks_rejected.add(
            1,
            {
                "reason": victim.code.value,
                "policy": pool.queue.policy,
                "pool_id": pool.id,
                "engine": pool.engine,
                "api": victim.item.api,
            },
        )
        if PRIORITIES.index(victim.item.priority) > PRIORITIES.index(priority):
            metrics.preemptions.add(1, {"mode": "soft", "engine": pool.engine, "pool_id": pool.id})
        victim.item.fail(
            victim.code, f"displaced by the {pool.queue.policy} policy", retriable=True
        )


class Admission:
    """Submit: the checks above, quotas, the admission policy, sessions, then the
    queue push (or the store's submit) and the 202's forecast and budget headers.
    Its collaborators are its constructor's arguments (ORCH-2420)."""

    def __init__(
        self,
        *,
        limits: AdmissionConfig,
        pools: dict[str, Pool],
        tasks: TaskStore,
        quotas: Quotas,
        sessions: SessionTable,
        workload: Workload,
        metrics: Metrics,
        tracing: Tracing,
        catalog: CatalogService,
        state: StoreBridge | None,
        policies: PolicyHost | None,
    ) -> None:
        self.limits = limits
        self.pools = pools
        self.tasks = tasks
        self.quotas = quotas
        self.sessions = sessions
        self.workload = workload
        self.metrics = metrics
        self.tracing = tracing
        self.catalog = catalog  # issue #18
        self.state = state  # with a `state:` section (ORCH-2522)
        self.policies = policies  # swapped by a policy reload (ORCH-8570)
        self.accepting = True  # False from the start of shutdown

    async def submit(
        self,
        body: bytes,
        tenant: str = DEFAULT_TENANT,
        *,
        api: str = "orchqueue",
        extra: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        attempt: int | None = None,
        note: bytes | None = None,  # a facade's own fields (ORCH-2592)
    ) -> TaskAccepted:
        """Admit one task of ``tenant`` (from its API key, ORCH-8004) or raise the
        OrchError that explains why not. ``api``: the API it came through, a label
        of the admission counters (ORCH-9220). A request identifies its retries
        (ORCH-1979) with ``idempotency_key`` (the ``Idempotency-Key`` header) or
        ``attempt`` (the client's retry count, the official SDKs'
        ``x-stainless-retry-count``; 0: a first attempt, which redeems no
        reservation); its key is then a digest of tenant, API and the idempotency
        key, else its body. Only identified requests get retry reservations."""
        pool: Pool | None = None
        key: str | None = None
        if idempotency_key is not None or attempt is not None:
            ident = body if idempotency_key is None else b"\0key\0" + idempotency_key.encode()
            scope = f"{tenant}\0{api}\0".encode()
            key = hashlib.blake2b(scope + ident, digest_size=16).hexdigest()
        submitted_ns = time.time_ns()
        try:
            if not self.accepting:
                raise PoolUnavailable("orchestratord is shutting down", retry_after_ms=1000)
            req = decode_request(body)
            pool = resolve_pool(req, self.pools, self.catalog)
            if pool.draining:
                raise PoolUnavailable(f"pool {pool.id} is draining", pool_id=pool.id)
            prepared = await prepare(req, pool, self.limits)
            if self.tasks.get(prepared.task_id) is not None:
                raise InvalidParams(f"task_id {prepared.task_id} already exists - at `$.task_id`")
            now = time.monotonic()
            max_tokens = prepared.request.max_tokens
            estimate = 0  # an uncounted prompt's tokens (ORCH-1993)
            if prepared.prompt_tokens is None:
                estimate = self.workload.prompt_tokens_estimate(pool.id, prepared.request.prompt)
            job = Job(  # ORCH-1958: the same forecast as every other prediction
                prepared.prompt_tokens or estimate, req.expected_tokens or max_tokens
            )
            self.workload.check_deadline(pool, req.deadline_ms, job, req.priority)
            in_flight = self.tasks.in_flight(tenant)
            try:
                if self.state is None:  # with a store, quotas are the store's (ORCH-2522)
                    self.quotas.admit(tenant, req.priority, in_flight, now)  # ORCH-1114
            except AdmissionRejected as exc:
                exc.pool_id, exc.engine = pool.id, pool.engine
                if isinstance(exc, TenantBusy):  # ORCH-1125: when one of its own tasks ends
                    own = self.tasks.in_flight_of(tenant)
                    exc.retry_after_ms = tenant_wait_ms(
                        self.workload, self.pools, own, tenant, pool
                    )
                backpressure(self.metrics, pool, "quota")
                raise
            if self.policies is not None:  # ORCH-8521: the operators' admission policy
                req, pool, prepared = await run_admission_policy(self, req, pool, prepared, tenant)
                max_tokens = prepared.request.max_tokens
            sid = str(req.session_id) if req.session_id else None
            pin = None
            reserve = 0
            rate = pool.config.cost_per_token.get(req.priority, 0.0)
            if sid is not None:
                assert prepared.prompt_tokens is not None  # sessions are counted (ORCH-1118)
                reserve = prepared.prompt_tokens + max_tokens
                session = self.sessions.begin_turn((tenant, sid), reserve, reserve * rate)
                pin = session.set_key
            if pin is None and req.determinism == "strict":
                pin = choose_set(pool.views())  # ORCH-1302: strict tasks stay in one set
            rec = TaskRecord(
                task_id=prepared.task_id,
                pool_id=pool.id,
                engine=pool.engine,
                priority=req.priority,
                request=prepared.request
                if extra is None  # a facade's engine fields (ORCH-9104), stored with it
                else msgspec.structs.replace(prepared.request, **extra),
                prompt_tokens=prepared.prompt_tokens or 0,
                prompt_counted=prepared.prompt_tokens is not None,
                prompt_estimate=estimate,
                session_id=sid,
                tenant=tenant,
                deadline=None if req.deadline_ms is None else now + req.deadline_ms / 1000,
                set_key=pin,
                expected_tokens=req.expected_tokens,
                cost_per_token=rate,
                correlation_id=CORRELATION_ID.get(),
                trace_carrier=TRACE_CARRIER.get(),  # None with tracing off (ORCH-7043)
                api=api,
                note=note,
            )
            # ORCH-1980/1981: a client back with its reservation is admitted; places
            # held for the others count as taken (kept by this instance: not with a store)
            mine, held, back = None, 0, time.monotonic()  # after any awaits above
            if self.state is None:
                mine, held = self.workload.holding(pool, None if attempt == 0 else key, back)
            try:
                if self.state is not None:  # ORCH-2522: admitted at the store
                    rec.queue_position = await self.state.submit(rec)
                    displaced = []
                else:
                    displaced = pool.queue.push(
                        rec, req.priority, tenant=tenant, deadline=rec.deadline,
                        held=held, redeemed=mine is not None and mine.due(back),
                    )  # fmt: skip
            except PoolUnavailable:  # ORCH-2551: store down, or withdrawn; ORCH-2586: drained
                if sid is not None:
                    self.sessions.undo_turn((tenant, sid), reserve, reserve * rate)
                raise
            except AdmissionRejected as exc:
                if sid is not None:  # not admitted: the turn and its reservation go back
                    self.sessions.undo_turn((tenant, sid), reserve, reserve * rate)
                if mine is not None:  # ORCH-1974: back early: the time left, place kept
                    exc.retry_after_ms = max(100, math.ceil((mine.at - back) * 1000))
                elif self.state is None:  # ORCH-1970, ORCH-1978: a place of its own
                    full = key is not None  # an anonymous client: the first place to open
                    exc.retry_after_ms = self.workload.retry_after_ms(pool, job, key, full=full)
                elif exc.retry_after_ms is None:  # else a bucket's own wait
                    exc.retry_after_ms = self.workload.retry_after_ms(pool, job)
                exc.pool_id, exc.engine = pool.id, pool.engine
                exc.queue_position = len(pool.queue)  # where it would have queued (ORCH-1107)
                backpressure(self.metrics, pool)
                raise
            if mine is not None:
                self.workload.release(pool, mine)  # ORCH-1980: used
            displace(self.metrics, pool, displaced, rec.priority)
            if self.tasks.get(rec.task_id) is None:  # a store dispatcher may have run it already
                self.tasks.add(rec)
            self.tracing.admitted(rec, submitted_ns)
        except OrchError as exc:
            self.metrics.tasks_rejected.add(
                1,
                {
                    "reason": exc.code.value,
                    "policy": exc.policy_label or "none",
                    "pool_id": pool.id if pool else "none",
                    "engine": pool.engine if pool else "none",
                    "api": api,
                },
            )
            raise
        self.metrics.tasks_enqueued.add(
            1, {"engine": pool.engine, "pool_id": pool.id, "priority": rec.priority, "api": api}
        )
        position = None
        if self.state is None:
            rec.queue_position = position = pool.queue.position(rec)
        now = time.monotonic()
        # ORCH-1957; the position just computed, not a second time (ORCH-2944)
        forecast, told_hold = self.workload.predicted(pool, rec, now, position)
        if position is not None:  # ORCH-2972: its start-by, and its 202 at its place
            told = keep_told_start(self.workload, pool, rec, (forecast, told_hold), position, now)
            forecast, told_hold = told
        rec.predicted_start_ms = int(forecast.start_ms) if forecast else 0
        if forecast is not None:  # the finish its client holds from now on (ORCH-2907)
            rec.finish_held = now + int(forecast.finish_ms) / 1000
            guard = self.workload.guard(pool)  # ORCH-2931: its limit under the guard
            if guard is not None:
                rec.finish_guard = now + guard * int(forecast.finish_ms) / 1000
                rec.told_hold = told_hold  # ORCH-2937: the decision its 202 tells it
        pool.wakeup.set()
        return TaskAccepted(
            rec.task_id,
            rec.queue_position,
            rec.predicted_start_ms,
            rec.predicted_start_ms,
            int(forecast.finish_ms) if forecast else None,
        )

    def budget_headers(self, task_id: str) -> dict[str, str]:
        """``X-Budget-*`` headers for the 202 of a session task (ORCH-1405)."""
        rec = self.tasks.get(task_id)
        s = self.sessions.get(rec.session_key) if rec and rec.session_key else None
        if s is None:
            return {}
        tokens, ms = self.sessions.remaining(s)
        headers = {"X-Budget-Turns-Remaining": str(max(0, self.sessions.max_turns - s.turns))}
        if tokens is not None:
            headers["X-Budget-Tokens-Remaining"] = str(tokens)
        if ms is not None:
            headers["X-Budget-Time-Ms-Remaining"] = str(ms)
        cost = self.sessions.cost_remaining(s)
        if cost is not None:
            headers["X-Budget-Cost-Remaining"] = f"{cost:g}"  # ORCH-1906
        return headers
