"""Admission: validate a submission and turn it into a queued task (ORCH-1001..1107).

Checks run in this order, and nothing is enqueued unless all pass:
body schema (msgspec) → pool resolution → pool has a Ready replica →
``ctx`` ≤ model limit → ``max_tokens`` ≤ limit → prompt rendered (chat
template for ``chat``) and counted with the engine's tokenizer → prompt +
max_tokens ≤ ctx → session turn budget → queue push (full policy).
"""

from __future__ import annotations

import uuid

import msgspec
from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.api import TaskRequest, derive_seed
from llama_orch.core.config import AdmissionConfig
from llama_orch.core.errors import InvalidParams, PoolUnready

from .pools import Pool

__all__ = ["Prepared", "decode_request", "prepare", "resolve_pool"]

_decoder = msgspec.json.Decoder(TaskRequest)


def decode_request(body: bytes) -> TaskRequest:
    """Decode the body; the error names the offending field (ORCH-1001)."""
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid task request: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise InvalidParams(f"request body is not valid JSON: {exc}") from exc
    if req.workload == "completion" and req.prompt is None:
        raise InvalidParams("`prompt` is required for workload `completion` - at `$.prompt`")
    if req.workload == "chat" and not req.messages:
        raise InvalidParams("`messages` is required for workload `chat` - at `$.messages`")
    if req.prompt is not None and req.messages is not None:
        raise InvalidParams("give either `prompt` or `messages`, not both - at `$.messages`")
    return req


def resolve_pool(req: TaskRequest, pools: dict[str, Pool]) -> Pool:
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
        candidates = [p for p in candidates if p.config.model == req.model_ref]
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
    max_tokens = req.max_tokens or min(limits.default_max_tokens, ctx)
    if max_tokens > limits.max_tokens_limit:
        raise InvalidParams(
            f"max_tokens {max_tokens} exceeds the limit {limits.max_tokens_limit}"
            " - at `$.max_tokens`"
        )
    if req.workload == "chat":
        assert req.messages is not None
        prompt = await adapter.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in req.messages]
        )
    else:
        assert req.prompt is not None
        prompt = req.prompt
    if req.session_id is None and len(prompt.encode()) + SPECIAL_TOKENS_MARGIN + max_tokens <= ctx:
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
    tid = req.task_id or uuid.uuid4()
    seed = req.seed if req.seed is not None else derive_seed(tid)
    gen = GenerateRequest(
        task_id=str(tid),
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
    )
    return Prepared(str(tid), gen, prompt_tokens, ctx)
