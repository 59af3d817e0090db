"""The OpenAI facade: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``
(ORCH-9120..ORCH-9126). Every request is one task; streams are the task's
events rendered as OpenAI chunks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from llama_orch.core.api import ChatMessage as OrchMessage
from llama_orch.core.api import EndEvent, ErrorEvent, TokenEvent, TokenLogprob
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
from ._embeddings import embeddings
from ._engine import chat_logprobs, completion_logprobs, engine_fields
from ._flow import Facade, FrontendState, decode_body
from ._tools import ToolCall, ToolPlan, call_text, openai_plan
from ._wire import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    StrictChatRequest,
    StrictCompletionRequest,
    Usage,
)

__all__ = ["ROUTES", "render_error"]

_json = msgspec.json.Encoder()
_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def render_error(
    status: int, message: str, param: str | None, code: str, headers: dict[str, str]
) -> Response:
    """OpenAI's error shape: ``{"error": {message, type, param, code}}``."""
    kind = _ERROR_TYPES.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Response(_json.encode(body), status, headers, media_type="application/json")


def _unsupported(req: ChatRequest | CompletionRequest) -> None:
    """ORCH-9115: a field llama-orch cannot honour is refused by name, not ignored."""
    if req.n is not None and req.n != 1:
        raise ApiError(400, "only n=1 is supported", param="n", code="invalid_value")
    for name in ("logit_bias", "frequency_penalty", "presence_penalty"):
        if getattr(req, name):
            raise ApiError(
                400, f"`{name}` is not supported by llama-orch", param=name,
                code="unsupported_parameter",
            )  # fmt: skip
    if isinstance(req, ChatRequest):
        if req.functions or req.function_call is not None:  # the deprecated form of tools
            name = "functions" if req.functions else "function_call"
            raise ApiError(
                400, f"`{name}` is deprecated and not supported: use `tools`", param=name,
                code="unsupported_parameter",
            )  # fmt: skip
        if req.modalities not in (None, ["text"]) or req.audio is not None:
            raise ApiError(
                400, "only text output is supported", param="modalities",
                code="unsupported_parameter",
            )  # fmt: skip
    elif req.echo or (req.best_of or 1) != 1 or req.suffix:
        name = "echo" if req.echo else "best_of" if req.best_of else "suffix"
        raise ApiError(400, f"`{name}` is not supported", param=name, code="unsupported_parameter")


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise ApiError(
                400, f"content parts of type {part.type!r} are not supported",
                param=f"{where}.content[{j}].type", code="unsupported_parameter",
            )  # fmt: skip
        out.append(part.text)
    return "".join(out)


def _messages(messages: list[ChatMessage]) -> list[OrchMessage]:
    """The conversation as plain turns; tool calls and their results are rendered
    as the facade asks the model to write and read them (ORCH-9243)."""
    out = []
    called: dict[str, str] = {}  # tool_call_id -> function name
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        text = _text(m.content, f"messages[{i}]")
        if role == "tool":
            name = called.get(m.tool_call_id or "", m.name or "the function")
            out.append(OrchMessage(role="user", content=f"Result of {name}:\n{text}"))
            continue
        if role not in ("system", "user", "assistant"):
            raise ApiError(
                400, f"messages with role {m.role!r} are not supported",
                param=f"messages[{i}].role", code="unsupported_parameter",
            )  # fmt: skip
        if m.tool_calls:
            calls = []
            for j, c in enumerate(m.tool_calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise ApiError(
                        400, "a tool call needs `function.name`",
                        param=f"messages[{i}].tool_calls[{j}].function", code="invalid_value",
                    )  # fmt: skip
                called[str(c.get("id", ""))] = fn["name"]
                calls.append(call_text(fn["name"], fn.get("arguments", {})))
            text = "\n".join([text, *calls] if text else calls)
        # the role is system, user or assistant (checked above); mypy does not narrow str by `in`
        out.append(OrchMessage(role=role, content=text))  # type: ignore[arg-type]
    if not out:
        raise ApiError(400, "`messages` must not be empty", param="messages", code="invalid_value")
    return out


def _tool_calls(call: ToolCall, task_id: str) -> list[dict[str, Any]]:
    """OpenAI's ``tool_calls`` of a choice for the call the model made (ORCH-9244)."""
    return [
        {"id": f"call_{task_id.replace('-', '')[:24]}", "type": "function",
         "function": {"name": call.name, "arguments": _json.encode(call.arguments).decode()}}
    ]  # fmt: skip


def _stops(stop: str | list[str] | None) -> list[str] | None:
    return [stop] if isinstance(stop, str) else stop


class _Events:
    """A finished task's outcome, collected from its events."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.end: EndEvent | None = None
        self.error: ErrorEvent | None = None

    async def collect(self, host: FrontendHost, rec: TaskRecord) -> None:
        async for _, ev in host.events(rec):
            if isinstance(ev, TokenEvent):
                self.text.append(ev.t)
                if ev.lp:
                    self.logprobs.extend(ev.lp)
            elif isinstance(ev, EndEvent):
                self.end = ev
            elif isinstance(ev, ErrorEvent):
                self.error = ev


def _api(request: Request) -> tuple[FrontendHost, Facade]:
    host = FrontendHost.of(request)
    return host, host.state(FrontendState).openai


async def models(request: Request) -> Response:
    host, facade = _api(request)
    try:
        host.principal(request, facade.api)
    except OrchError as exc:
        return facade.orch_error(exc)
    data = [
        {"id": p.id, "object": "model", "created": 0, "owned_by": "llama-orch",
         "llorch_model_ref": p.config.model, "llorch_engine": p.engine}
        for p in host.pools.values()
    ]  # fmt: skip
    return Response(_json.encode({"object": "list", "data": data}), media_type="application/json")


async def generate(request: Request, chat: bool) -> Response:
    host, facade = _api(request)
    pool: Pool | None = None
    facade.received()
    try:
        who = host.principal(request, facade.api)
        body = await request.body()
        strict = facade.strict(request)
        req: ChatRequest | CompletionRequest
        if chat:
            req = decode_body(body, ChatRequest, StrictChatRequest, strict)
        else:
            req = decode_body(body, CompletionRequest, StrictCompletionRequest, strict)
        pool = resolve_model(host, req.model)
        _unsupported(req)
        plan = openai_plan(req.tools, req.tool_choice) if isinstance(req, ChatRequest) else None
        engine = await engine_fields(host, pool, req, facade.api, plan)  # ORCH-9202
        extras = extras_from(
            request,
            req.metadata,
            {"priority": req.priority, "deadline_ms": req.deadline_ms,
             "session_id": req.session_id},
        )  # fmt: skip
        fields: dict[str, Any] = {
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "top_p": req.top_p,
            "seed": req.seed,
            "stop": _stops(req.stop),
            "top_k": req.top_k,
            "min_p": req.min_p,
            "repeat_penalty": req.repeat_penalty,
        }
        if isinstance(req, ChatRequest):
            fields["max_tokens"] = req.max_completion_tokens or req.max_tokens
            fields["workload"] = "chat"
            messages = _messages(req.messages)
            fields["messages"] = plan.with_instructions(messages) if plan else messages
        else:
            fields["max_tokens"] = req.max_tokens or 16  # the API's own default
            prompt = req.prompt
            if isinstance(prompt, list):
                if len(prompt) != 1:
                    raise ApiError(
                        400, "exactly one prompt is supported", param="prompt",
                        code="invalid_value",
                    )  # fmt: skip
                prompt = prompt[0]
            fields["prompt"] = prompt
        rec = await facade.admit(
            request, pool, extras, who.tenant, fields, engine, stream=bool(req.stream)
        )
    except ApiError as exc:
        return facade.api_error(exc, pool)
    except OrchError as exc:
        return facade.orch_error(exc)
    created = int(time.time())
    headers = facade.task_headers(rec)
    if req.stream:
        usage = bool(req.stream_options and req.stream_options.include_usage)
        with_lp = engine.logprobs is not None
        chunks: AsyncIterator[bytes]
        if chat:
            tools = plan if plan is not None and plan.active else None
            chunks = _chat_chunks(facade, rec, req.model, created, usage, with_lp, tools)
        else:
            chunks = _completion_chunks(facade, rec, req.model, created, usage, with_lp)
        return TaskStreamResponse(chunks, host, rec, headers)

    async def produce() -> tuple[int, bytes, dict[str, str]]:
        out = _Events()
        await out.collect(host, rec)
        if out.error is not None or out.end is None or out.end.reason == "canceled":
            code, message = _failure(out)
            status, kind = facade.event_error(code, message)
            resp = render_error(status, message, None, kind, headers)
            return status, bytes(resp.body), headers
        end = out.end
        text = "".join(out.text)
        usage = Usage(
            prompt_tokens=end.tokens_in,
            completion_tokens=completion_tokens(rec, end),
            total_tokens=end.tokens_in + completion_tokens(rec, end),
        )
        finish = _FINISH.get(end.reason, "stop")
        lps = out.logprobs if engine.logprobs is not None else None
        call = plan.parse(text) if plan is not None and plan.active else None
        if chat:
            reply: dict[str, Any] = {"role": "assistant", "content": text}
            if call is not None:  # ORCH-9244
                reply = {"role": "assistant", "content": None,
                         "tool_calls": _tool_calls(call, rec.task_id)}  # fmt: skip
                finish = "tool_calls"
            doc: dict[str, Any] = {
                "id": f"chatcmpl-{rec.task_id}",
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {"index": 0, "message": reply,
                     "logprobs": None if lps is None else chat_logprobs(lps),
                     "finish_reason": finish}
                ],
                "usage": usage,
            }  # fmt: skip
        else:
            doc = {
                "id": f"cmpl-{rec.task_id}",
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "finish_reason": finish,
                        "logprobs": None if lps is None else completion_logprobs(lps, 0),
                    }
                ],
                "usage": usage,
            }
        return 200, _json.encode(doc), headers

    return TaskResponse(produce, host, rec)


async def chat_completions(request: Request) -> Response:
    return await generate(request, True)


async def completions(request: Request) -> Response:
    return await generate(request, False)


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
]


def _failure(out: _Events) -> tuple[ErrorCode | None, str]:
    """The error of a task that did not complete; ``None``: it was canceled."""
    if out.error is not None:
        return out.error.code, out.error.message
    return None, "the task was canceled before it finished"


def _error_chunk(facade: Facade, code: ErrorCode | None, message: str) -> bytes:
    status, kind = facade.event_error(code, message)
    body = {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"),
                      "param": None, "code": kind}}  # fmt: skip
    return b"data: " + _json.encode(body) + b"\n\n"


async def _chat_chunks(
    facade: Facade,
    rec: TaskRecord,
    model: str,
    created: int,
    include_usage: bool,
    with_logprobs: bool,
    tools: ToolPlan | None = None,
) -> AsyncIterator[bytes]:
    """ORCH-9121: role chunk, one chunk per token, a finish chunk, optional usage, [DONE].
    A task that fails ends the stream with an error chunk and no [DONE].

    With tools (ORCH-9244) the text is held while it may still be a call (all of it
    when the engine is constrained to one): a call goes out as two ``tool_calls``
    chunks (id and name, then the arguments) and ``finish_reason: "tool_calls"``."""
    head = (
        b'data: {"id":"chatcmpl-' + rec.task_id.encode() + b'","object":"chat.completion.chunk",'
        b'"created":' + str(created).encode() + b',"model":' + _json.encode(model)
    )
    usage_null = b',"usage":null' if include_usage else b""
    token_open = head + usage_null + b',"choices":[{"index":0,"delta":{"content":'
    token_close = b'},"logprobs":null,"finish_reason":null}]}\n\n'
    yield (
        head + usage_null
        + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
          b'"logprobs":null,"finish_reason":null}]}\n\n'
    )  # fmt: skip
    held: list[str] | None = None if tools is None else []

    def token(ev: TokenEvent) -> bytes | None:
        nonlocal held
        if held is not None and tools is not None:
            held.append(ev.t)
            if tools.constrained or tools.undecided(text := "".join(held)):
                return None
            held = None  # an answer in text: what was held goes out, the rest follows
            return token_open + _json.encode(text) + token_close
        if with_logprobs:  # ORCH-9201: this chunk's tokens
            return (
                token_open + _json.encode(ev.t) + b'},"logprobs":'
                + _json.encode(chat_logprobs(ev.lp or []))
                + b',"finish_reason":null}]}\n\n'
            )  # fmt: skip
        return token_open + _json.encode(ev.t) + token_close

    def end(ev: EndEvent) -> list[bytes]:
        out: list[bytes] = []
        finish = _FINISH.get(ev.reason, "stop").encode()
        if held is not None and tools is not None:
            text = "".join(held)
            call = tools.parse(text)
            if call is not None:
                tc = _tool_calls(call, rec.task_id)[0]
                opened = {"index": 0, "id": tc["id"], "type": "function",
                          "function": {"name": call.name, "arguments": ""}}  # fmt: skip
                args = {"index": 0, "function": {"arguments": tc["function"]["arguments"]}}
                for part in (opened, args):
                    out.append(
                        head + usage_null
                        + b',"choices":[{"index":0,"delta":{"tool_calls":['
                        + _json.encode(part)
                        + b']},"logprobs":null,"finish_reason":null}]}\n\n'
                    )  # fmt: skip
                finish = b"tool_calls"
            elif text:
                out.append(token_open + _json.encode(text) + token_close)
        out.append(
            head + usage_null + b',"choices":[{"index":0,"delta":{},"logprobs":null,'
            b'"finish_reason":"' + finish + b'"}]}\n\n'
        )  # fmt: skip
        return out

    async for message in _batched(facade, rec, head if include_usage else None, token, end):
        yield message


async def _batched(
    facade: Facade,
    rec: TaskRecord,
    usage_head: bytes | None,
    token: Callable[[TokenEvent], bytes | None],
    end: Callable[[EndEvent], list[bytes]],
) -> AsyncIterator[bytes]:
    """The stream loop of both routes (ORCH-2763): the chunks of the events available
    together go out as one message, the first token's at once (not behind its batch);
    ``token`` renders a token event (``None``: held back), ``end`` the chunks closing a
    finished task, followed by the usage chunk (when ``usage_head`` is given) and
    ``[DONE]``; a canceled or failed task ends with an error chunk and no ``[DONE]``."""
    first = True
    async for batch in facade.host.event_batches(rec):
        out: list[bytes] = []
        for _, ev in batch:
            if isinstance(ev, TokenEvent):
                chunk = token(ev)
                if chunk is None:
                    continue
                out.append(chunk)
                if first:
                    first = False
                    yield b"".join(out)
                    out = []
            elif isinstance(ev, EndEvent):
                if ev.reason == "canceled":
                    out.append(_error_chunk(facade, None, "the task was canceled"))
                    yield b"".join(out)
                    return
                out.extend(end(ev))
                if usage_head is not None:
                    usage = Usage(
                        prompt_tokens=ev.tokens_in,
                        completion_tokens=completion_tokens(rec, ev),
                        total_tokens=ev.tokens_in + completion_tokens(rec, ev),
                    )
                    out.append(
                        usage_head + b',"choices":[],"usage":' + _json.encode(usage) + b"}\n\n"
                    )
                out.append(b"data: [DONE]\n\n")
            elif isinstance(ev, ErrorEvent):
                out.append(_error_chunk(facade, ev.code, ev.message))
                yield b"".join(out)
                return
        if out:
            yield b"".join(out)


async def _completion_chunks(
    facade: Facade,
    rec: TaskRecord,
    model: str,
    created: int,
    include_usage: bool,
    with_logprobs: bool,
) -> AsyncIterator[bytes]:
    head = (
        b'data: {"id":"cmpl-' + rec.task_id.encode() + b'","object":"text_completion",'
        b'"created":' + str(created).encode() + b',"model":' + _json.encode(model)
    )
    usage_null = b',"usage":null' if include_usage else b""
    token_open = head + usage_null + b',"choices":[{"index":0,"text":'
    token_close = b',"logprobs":null,"finish_reason":null}]}\n\n'
    offset = 0

    def token(ev: TokenEvent) -> bytes:
        nonlocal offset
        if with_logprobs:  # ORCH-9201: this chunk's tokens
            chunk = (
                token_open + _json.encode(ev.t) + b',"logprobs":'
                + _json.encode(completion_logprobs(ev.lp or [], offset))
                + b',"finish_reason":null}]}\n\n'
            )  # fmt: skip
            offset += len(ev.t)
            return chunk
        return token_open + _json.encode(ev.t) + token_close

    def end(ev: EndEvent) -> list[bytes]:
        finish = _FINISH.get(ev.reason, "stop").encode()
        return [
            head + usage_null + b',"choices":[{"index":0,"text":"","logprobs":null,'
            b'"finish_reason":"' + finish + b'"}]}\n\n'
        ]  # fmt: skip

    async for message in _batched(facade, rec, head if include_usage else None, token, end):
        yield message
