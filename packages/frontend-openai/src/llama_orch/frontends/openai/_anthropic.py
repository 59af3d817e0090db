"""The Anthropic facade: ``POST /v1/messages`` (ORCH-9130..ORCH-9132).

Authenticated by ``x-api-key`` as well as ``Authorization: Bearer``; errors in
Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``;
streams as Anthropic's named events (``message_start`` ... ``message_stop``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from llama_orch.core.api import ChatMessage as OrchMessage
from llama_orch.core.api import EndEvent, ErrorEvent, TokenEvent
from llama_orch.core.errors import ErrorCode, OrchError
from llama_orch.orchestratord.frontends import FrontendHost
from llama_orch.orchestratord.pools import Pool
from llama_orch.orchestratord.tasks import TaskRecord
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._common import (
    ApiError,
    TaskResponse,
    TaskStreamResponse,
    completion_tokens,
    extras_from,
    resolve_model,
)
from ._engine import tool_fields
from ._flow import Facade, FrontendState, decode_body
from ._tools import ToolCall, ToolPlan, anthropic_plan, call_text
from ._wire import AnthropicPart, MessagesRequest, StrictMessagesRequest

__all__ = ["ROUTES"]

_json = msgspec.json.Encoder()
_STOP = {"eos": "end_turn", "stop": "stop_sequence", "length": "max_tokens"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def render_error(
    status: int, message: str, param: str | None, code: str, headers: dict[str, str]
) -> Response:
    kind = _ERROR_TYPES.get(status, "api_error")
    text = f"{param}: {message}" if param and param not in message else message
    body = {"type": "error", "error": {"type": kind, "message": text}}
    return Response(_json.encode(body), status, headers, media_type="application/json")


def _text(
    content: str | list[AnthropicPart] | None, where: str, called: dict[str, str] | None = None
) -> str:
    """A message's blocks as one turn's text; tool_use and tool_result blocks are
    rendered as the facade asks the model to write and read calls (ORCH-9245)."""
    if content is None or isinstance(content, str):
        return content or ""
    out = []
    for j, part in enumerate(content):
        if part.type == "text" and part.text is not None:
            out.append(part.text)
        elif part.type == "tool_use" and called is not None and part.name:
            called[part.id or ""] = part.name
            out.append(call_text(part.name, part.input or {}))
        elif part.type == "tool_result" and called is not None:
            name = called.get(part.tool_use_id or "", "the tool")
            body = part.content
            if isinstance(body, list):
                body = "".join(str(b.get("text", "")) for b in body if b.get("type") == "text")
            flag = " (error)" if part.is_error else ""
            out.append(f"Result of {name}{flag}:\n{body or ''}")
        else:
            raise ApiError(
                400, f"content blocks of type {part.type!r} are not supported",
                param=f"{where}.content.{j}.type", code="unsupported",
            )  # fmt: skip
    return "\n".join(out) if called is not None else "".join(out)


def _messages(req: MessagesRequest) -> list[OrchMessage]:
    out = []
    if req.system:
        out.append(OrchMessage(role="system", content=_text(req.system, "system")))
    called: dict[str, str] = {}
    for i, m in enumerate(req.messages):
        if m.role not in ("user", "assistant"):
            raise ApiError(
                400, f"messages.{i}.role: must be 'user' or 'assistant'",
                param=f"messages.{i}.role", code="invalid",
            )  # fmt: skip
        text = _text(m.content, f"messages.{i}", called)
        # the role is "user" or "assistant" (checked above); mypy does not narrow str by `in`
        out.append(OrchMessage(role=m.role, content=text))  # type: ignore[arg-type]
    if not req.messages:
        raise ApiError(
            400, "messages: at least one message is required", param="messages", code="invalid"
        )
    return out


def _unsupported(req: MessagesRequest) -> None:
    if req.thinking:
        raise ApiError(
            400, "thinking: not supported by this pool's engine", param="thinking",
            code="unsupported",
        )  # fmt: skip


def _tool_use(call: ToolCall, task_id: str) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": f"toolu_{task_id.replace('-', '')[:24]}",
        "name": call.name,
        "input": call.arguments,
    }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _json.encode(data) + b"\n\n"


async def messages(request: Request) -> Response:
    host = FrontendHost.of(request)
    facade = host.state(FrontendState).anthropic
    pool: Pool | None = None
    facade.received()
    try:
        who = host.principal(request, facade.api)
        req = decode_body(
            await request.body(), MessagesRequest, StrictMessagesRequest,
            facade.strict(request),
        )  # fmt: skip
        pool = resolve_model(host, req.model)
        _unsupported(req)
        plan = anthropic_plan(req.tools, req.tool_choice)
        engine = await tool_fields(host, pool, plan, req.model, facade.api)  # ORCH-9245
        tools = plan if plan is not None and plan.active else None
        meta = req.metadata or {}
        extras = extras_from(
            request,
            {k: str(v) for k, v in meta.items() if k.startswith("llorch_")},
            {"priority": req.priority, "deadline_ms": req.deadline_ms,
             "session_id": req.session_id},
        )  # fmt: skip
        fields = {
            "workload": "chat",
            "messages": tools.with_instructions(_messages(req)) if tools else _messages(req),
            "max_tokens": req.max_tokens,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "top_p": req.top_p,
            "top_k": req.top_k,
            "seed": req.seed,
            "stop": req.stop_sequences,
        }
        rec = await facade.admit(
            request, pool, extras, who.tenant, fields, engine, stream=bool(req.stream)
        )
    except ApiError as exc:
        return facade.api_error(exc, pool)
    except OrchError as exc:
        return facade.orch_error(exc)
    headers = facade.task_headers(rec)
    if req.stream:
        return TaskStreamResponse(_stream(facade, rec, req.model, tools), host, rec, headers)

    async def produce() -> tuple[int, bytes, dict[str, str]]:
        text: list[str] = []
        end: EndEvent | None = None
        err: ErrorEvent | None = None
        async for _, ev in host.events(rec):
            if isinstance(ev, TokenEvent):
                text.append(ev.t)
            elif isinstance(ev, EndEvent):
                end = ev
            elif isinstance(ev, ErrorEvent):
                err = ev
        if end is None or end.reason == "canceled":
            code: ErrorCode | None = err.code if err else None
            message = err.message if err else "the task was canceled"
            status, kind = facade.event_error(code, message)
            resp = render_error(status, message, None, kind, headers)
            return status, bytes(resp.body), headers
        answer = "".join(text)
        stop = _STOP.get(end.reason, "end_turn")
        content: list[dict[str, Any]] = [{"type": "text", "text": answer}]
        if tools is not None and (call := tools.parse(answer)) is not None:
            content, stop = [_tool_use(call, rec.task_id)], "tool_use"
        doc = {
            "id": f"msg_{rec.task_id}",
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": end.tokens_in,
                "output_tokens": completion_tokens(rec, end),
            },
        }
        return 200, _json.encode(doc), headers

    return TaskResponse(produce, host, rec)


ROUTES = [Route("/v1/messages", messages, methods=["POST"])]


async def _stream(
    facade: Facade, rec: TaskRecord, model: str, tools: ToolPlan | None = None
) -> AsyncIterator[bytes]:
    """ORCH-9131: message_start, one text block of deltas, message_delta, message_stop;
    a failed task ends with an ``error`` event. With tools (ORCH-9245) the text is
    held while it may still be a call; a call is one ``tool_use`` block whose input
    arrives as one ``input_json_delta``."""
    yield _sse(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": f"msg_{rec.task_id}", "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": rec.prompt_tokens, "output_tokens": 0},
            },
        },
    )  # fmt: skip
    text_start = _sse(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    delta_open = (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
    )
    held: list[str] | None = None if tools is None else []
    if held is None:
        yield text_start
    async for _, ev in facade.host.events(rec):
        if isinstance(ev, TokenEvent):
            if held is not None and tools is not None:
                held.append(ev.t)
                if tools.constrained or tools.undecided(text := "".join(held)):
                    continue
                held = None
                yield text_start + delta_open + _json.encode(text) + b"}}\n\n"
            else:
                yield delta_open + _json.encode(ev.t) + b"}}\n\n"
        elif isinstance(ev, EndEvent) and ev.reason != "canceled":
            stop = _STOP.get(ev.reason, "end_turn")
            if held is not None and tools is not None:
                text = "".join(held)
                if (call := tools.parse(text)) is not None:
                    block = _tool_use(call, rec.task_id)
                    yield _sse(
                        "content_block_start",
                        {"type": "content_block_start", "index": 0,
                         "content_block": {**block, "input": {}}},
                    )  # fmt: skip
                    yield _sse(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": 0,
                         "delta": {"type": "input_json_delta",
                                   "partial_json": _json.encode(call.arguments).decode()}},
                    )  # fmt: skip
                    stop = "tool_use"
                else:
                    yield text_start + (
                        delta_open + _json.encode(text) + b"}}\n\n" if text else b""
                    )
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {
                        "input_tokens": ev.tokens_in,
                        "output_tokens": completion_tokens(rec, ev),
                    },
                },
            )
            yield _sse("message_stop", {"type": "message_stop"})
        elif isinstance(ev, (EndEvent, ErrorEvent)):
            code = ev.code if isinstance(ev, ErrorEvent) else None
            message = ev.message if isinstance(ev, ErrorEvent) else "the task was canceled"
            status, _ = facade.event_error(code, message)
            kind = _ERROR_TYPES.get(status, "api_error")
            yield _sse("error", {"type": "error", "error": {"type": kind, "message": message}})
            return
