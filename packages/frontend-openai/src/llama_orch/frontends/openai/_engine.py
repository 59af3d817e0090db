"""Request fields that only some engines honour: ``response_format`` (a JSON
schema the output must match) and ``logprobs`` / ``top_logprobs``
(ORCH-9200..ORCH-9202), and how their answers look in OpenAI's shapes.

Whether a pool can honour them is what its engine adapter declares
(``Capability.JSON_SCHEMA``, ``Capability.LOGPROBS``); a pool that cannot gets
a 400 naming the field, never a silently unconstrained answer (ORCH-9115).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llama_orch.core.adapter_api import Capability
from llama_orch.core.api import TokenLogprob
from llama_orch.core.errors import ErrorCode, PoolUnready
from llama_orch.orchestratord.frontends import FrontendHost
from llama_orch.orchestratord.pools import Pool

from ._common import ApiError
from ._tools import ToolPlan
from ._wire import ChatRequest, CompletionRequest

__all__ = [
    "EngineFields",
    "chat_logprobs",
    "completion_logprobs",
    "engine_fields",
    "pool_capabilities",
    "text_format_schema",
    "tool_fields",
]

# OpenAI's own bounds: top_logprobs 0..20 (chat), logprobs 0..5 (completions)
_MAX_TOP = {"top_logprobs": 20, "logprobs": 5}


@dataclass(frozen=True, slots=True)
class EngineFields:
    json_schema: dict[str, Any] | None = None
    logprobs: int | None = None  # alternatives per token; 0: the chosen token only


def _schema(rf: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a chat ``response_format``; ``None`` for plain text."""
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(
                400, "`response_format.json_schema.schema` must be a JSON schema object",
                param="response_format.json_schema.schema", code="invalid_value",
            )  # fmt: skip
        return schema
    raise ApiError(
        400, f"`response_format` of type {kind!r} is not supported",
        param="response_format.type", code="invalid_value",
    )  # fmt: skip


def _top(value: int | None, name: str) -> int:
    top = value or 0
    if not 0 <= top <= _MAX_TOP[name]:
        raise ApiError(
            400, f"`{name}` must be between 0 and {_MAX_TOP[name]}", param=name,
            code="invalid_value",
        )  # fmt: skip
    return top


def _requested(
    req: ChatRequest | CompletionRequest, tools: ToolPlan | None
) -> tuple[EngineFields, list[str]]:
    """The engine fields of ``req`` and the request fields that asked for them."""
    schema, logprobs, asked = None, None, []
    if tools is not None and tools.active:  # ORCH-9242
        asked.append("tools")
        if tools.constrained:
            schema = tools.schema()
    if isinstance(req, ChatRequest):
        if req.response_format is not None:
            text_schema = _schema(req.response_format)
            if text_schema is not None:
                if tools is not None and tools.active:
                    raise ApiError(
                        400, "`response_format` together with `tools` is not supported",
                        param="response_format", code="unsupported_parameter",
                    )  # fmt: skip
                schema = text_schema
                asked.append("response_format")
        if req.logprobs:
            if tools is not None and tools.active:
                raise ApiError(
                    400, "`logprobs` together with `tools` is not supported", param="logprobs",
                    code="unsupported_parameter",
                )  # fmt: skip
            logprobs = _top(req.top_logprobs, "top_logprobs")
            asked.append("logprobs")
        elif req.top_logprobs:
            raise ApiError(
                400, "`top_logprobs` needs `logprobs: true`", param="top_logprobs",
                code="invalid_value",
            )  # fmt: skip
    elif req.logprobs is not None and req.logprobs is not False:
        # completions: `logprobs` is the number of alternatives (0 included)
        logprobs = _top(int(req.logprobs), "logprobs")
        asked.append("logprobs")
    return EngineFields(schema, logprobs), asked


async def pool_capabilities(host: FrontendHost, pool: Pool, api: str) -> frozenset[Capability]:
    """What the pool's engine adapter declares; with no Ready replica to ask, the
    retry-later refusal admission would give (counted here, ORCH-9114)."""
    caps = await host.capabilities(pool)
    if caps is None:
        host.rejected(pool, ErrorCode.POOL_UNREADY, api)
        raise PoolUnready(
            f"pool {pool.id} has no Ready replica yet", pool_id=pool.id, engine=pool.engine,
            retry_after_ms=1000,
        )  # fmt: skip
    return caps


_NEEDS = {
    "response_format": Capability.JSON_SCHEMA,
    "logprobs": Capability.LOGPROBS,
    "tools": Capability.JSON_SCHEMA,  # a call is JSON the engine holds to a schema
    "text.format": Capability.JSON_SCHEMA,  # the Responses API's response_format
}


async def engine_fields(
    host: FrontendHost,
    pool: Pool,
    req: ChatRequest | CompletionRequest,
    api: str,
    tools: ToolPlan | None = None,
) -> EngineFields:
    """ORCH-9202: the fields passed to the engine, or a 400 naming the first one the
    pool's engine adapter does not declare."""
    fields, asked = _requested(req, tools)
    await _check(host, pool, asked, req.model, api)
    return fields


async def tool_fields(
    host: FrontendHost,
    pool: Pool,
    tools: ToolPlan | None,
    model: str,
    api: str,
    text_schema: dict[str, Any] | None = None,
) -> EngineFields:
    """ORCH-9242 for a facade whose engine fields are tools (Anthropic) and, on the
    Responses API, a ``text.format`` schema (ORCH-9276)."""
    active = tools is not None and tools.active
    if text_schema is not None:
        if active:
            raise ApiError(
                400, "`text.format` together with `tools` is not supported",
                param="text.format", code="unsupported_parameter",
            )  # fmt: skip
        await _check(host, pool, ["text.format"], model, api)
        return EngineFields(text_schema)
    if tools is None or not active:
        return EngineFields()
    await _check(host, pool, ["tools"], model, api)
    return EngineFields(tools.schema() if tools.constrained else None)


def text_format_schema(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """ORCH-9276: the JSON schema of a Responses ``text.format``; ``None`` for text."""
    kind = (fmt or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        schema = (fmt or {}).get("schema")
        if not isinstance(schema, dict):
            raise ApiError(
                400, "`text.format.schema` must be a JSON schema object",
                param="text.format.schema", code="invalid_value",
            )  # fmt: skip
        return schema
    raise ApiError(
        400, f"`text.format` of type {kind!r} is not supported", param="text.format.type",
        code="invalid_value",
    )  # fmt: skip


async def _check(host: FrontendHost, pool: Pool, asked: list[str], model: str, api: str) -> None:
    if not asked:
        return
    caps = await pool_capabilities(host, pool, api)
    for name in asked:
        if _NEEDS[name] not in caps:
            why = " (tool calls need output held to a JSON schema)" if name == "tools" else ""
            raise ApiError(
                400, f"`{name}` is not supported by the engine of model `{model}`"
                f" ({pool.engine}){why}", param=name, code="unsupported_parameter",
            )  # fmt: skip


def chat_logprobs(lps: list[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's ``logprobs`` object for these tokens."""
    return {
        "content": [
            {"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
             "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": a.bytes}
                              for a in t.top]}
            for t in lps
        ],
        "refusal": None,
    }  # fmt: skip


def completion_logprobs(lps: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object; ``offset``: text length before."""
    offsets = []
    for t in lps:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in lps],
        "token_logprobs": [t.logprob for t in lps],
        "top_logprobs": [{a.token: a.logprob for a in t.top} for t in lps],
        "text_offset": offsets,
    }
