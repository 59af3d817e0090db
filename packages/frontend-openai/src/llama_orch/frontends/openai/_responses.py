"""OpenAI's Responses API on tasks (ORCH-9140..ORCH-9144).

A response *is* a task: ``resp_<task_id>``. Its stream events are a pure
function of the task's event log, numbered in order (``sequence_number``), so
any reader, at any time, sees the same numbers: ``GET
/v1/responses/{id}?stream=true&starting_after=N`` replays from the log and
resumes exactly after event N, nothing lost or repeated. ``background: true``
answers at once and the task runs whether or not anyone reads; a request
without it is canceled when its client goes away (ORCH-9113).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from llama_orch.core.api import ChatMessage as OrchMessage
from llama_orch.core.api import EndEvent, ErrorEvent, StartedEvent, StreamEvent, TokenEvent
from llama_orch.core.errors import OrchError
from llama_orch.orchestratord.frontends import FrontendHost
from llama_orch.orchestratord.pools import Pool
from llama_orch.orchestratord.tasks import TaskRecord
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ._common import (
    ApiError,
    BoundedStream,
    TaskResponse,
    TaskStreamResponse,
    completion_tokens,
    extras_from,
    resolve_model,
)
from ._engine import text_format_schema, tool_fields
from ._flow import Backgrounds, FrontendState, ResponseMeta, decode_body
from ._tools import ToolCall, call_text, responses_plan
from ._wire import ResponsesRequest, StrictResponsesRequest

__all__ = ["ROUTES"]

_json = msgspec.json.Encoder()
_PREFIX = "resp_"


class ResponseView:
    """The Responses-API view of one task, built by feeding it the task's events.

    With active tools the output item is held while the answer may still be a
    call (ORCH-9273); it becomes a ``function_call`` item or the ``message`` item,
    decided from the text alone, so every reader numbers the same events."""

    def __init__(self, rec: TaskRecord, meta: ResponseMeta) -> None:
        self.rec, self.meta = rec, meta
        self.model, self.background = meta.model, meta.background
        self.plan = meta.plan if meta.plan is not None and meta.plan.active else None
        self.text: list[str] = []
        self.status = "queued"
        self.end: EndEvent | None = None
        self.error: ErrorEvent | None = None
        self.started = False
        self.kind: str | None = None  # "message" | "call": the output item, once decided
        self.call: ToolCall | None = None

    @property
    def item_id(self) -> str:
        return f"msg_{self.rec.task_id}"

    def _message(self, done: bool) -> dict[str, Any]:
        part = {
            "type": "output_text",
            "text": "".join(self.text),
            "annotations": [],
            "logprobs": [],
        }
        return {
            "type": "message",
            "id": self.item_id,
            "status": "completed" if done else "in_progress",
            "role": "assistant",
            "content": [part],
        }

    def _function_call(self, done: bool) -> dict[str, Any]:
        """ORCH-9272: the call as OpenAI's ``function_call`` output item."""
        assert self.call is not None
        return {
            "type": "function_call",
            "id": f"fc_{self.rec.task_id}",
            "call_id": f"call_{self.rec.task_id.replace('-', '')[:24]}",
            "name": self.call.name,
            "arguments": _json.encode(self.call.arguments).decode() if done else "",
            "status": "completed" if done else "in_progress",
        }

    def _output(self, done: bool) -> list[dict[str, Any]]:
        if self.kind == "call":
            return [self._function_call(done)]
        if self.kind == "message":
            return [self._message(done)]
        return []

    def body(self) -> dict[str, Any]:
        """The response object as of the events fed so far."""
        done = self.status in ("completed", "incomplete", "failed", "cancelled")
        usage = None
        if self.end is not None:
            out = completion_tokens(self.rec, self.end)  # ORCH-9250
            usage = {
                "input_tokens": self.end.tokens_in,
                "output_tokens": out,
                "total_tokens": self.end.tokens_in + out,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            }
        error = None
        if self.error is not None:
            error = {"code": "server_error", "message": self.error.message}
        meta = self.meta
        return {
            "id": _PREFIX + self.rec.task_id,
            "object": "response",
            "created_at": int(self.rec.created_wall),
            "status": self.status,
            "background": self.background,
            "model": self.model,
            "output": self._output(done),
            "usage": usage,
            "error": error,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if self.status == "incomplete" else None
            ),
            "instructions": None,
            "metadata": {},
            "parallel_tool_calls": False,
            "temperature": self.rec.request.temperature,
            "top_p": self.rec.request.top_p,
            # ORCH-9272: the request's tools and tool_choice, echoed
            "tool_choice": (meta.tool_choice or "auto") if meta.tools else "none",
            "tools": meta.tools or [],
            "text": {"format": meta.text_format or {"type": "text"}},
        }

    def _open_message(self) -> list[tuple[str, dict[str, Any]]]:
        self.kind = "message"
        item = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            ("response.output_item.added", {"output_index": 0, "item": self._message(False)}),
            ("response.content_part.added", {**item, "part": empty}),
        ]

    def _decide(self, ended: bool) -> list[tuple[str, dict[str, Any]]]:
        """Held output (ORCH-9273): opens the item once the text says what it is;
        at the end (``ended``) a call, or else the message with the held text."""
        text = "".join(self.text)
        plan = self.plan
        if plan is not None and not ended and (plan.constrained or plan.undecided(text)):
            return []
        if plan is not None and ended and self.error is None:
            self.call = plan.parse(text)
            if self.call is not None:
                self.kind = "call"
                return [
                    ("response.output_item.added",
                     {"output_index": 0, "item": self._function_call(False)}),
                ]  # fmt: skip
        out = self._open_message()
        if text:
            delta = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
            out.append(("response.output_text.delta", {**delta, "delta": text, "logprobs": []}))
        return out

    def feed(self, ev: StreamEvent | None) -> list[tuple[str, dict[str, Any]]]:
        """The Responses events one task event makes (``None``: the first call)."""
        item: dict[str, Any] = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        if ev is None:
            kind = "response.queued" if self.background else "response.created"
            return [(kind, {"response": self.body()})]
        if isinstance(ev, StartedEvent):
            self.started, self.status = True, "in_progress"
            began = [("response.in_progress", {"response": self.body()})]
            return began + (self._open_message() if self.plan is None else [])
        if isinstance(ev, TokenEvent):
            self.text.append(ev.t)
            if self.kind is None:
                return self._decide(False)
            return [("response.output_text.delta", {**item, "delta": ev.t, "logprobs": []})]
        if isinstance(ev, EndEvent):
            self.end = ev
            self.status = {"canceled": "cancelled", "length": "incomplete"}.get(
                ev.reason, "completed"
            )
        elif isinstance(ev, ErrorEvent):
            self.error, self.status = ev, "failed"
        else:
            return []
        last = {
            "completed": "response.completed",
            "incomplete": "response.incomplete",
        }.get(self.status, "response.failed")
        out: list[tuple[str, dict[str, Any]]] = []
        if self.started:
            if self.kind is None:
                out += self._decide(True)
            if self.kind == "call":
                call = self._function_call(True)
                at: dict[str, Any] = {"item_id": call["id"], "output_index": 0}
                out += [
                    ("response.function_call_arguments.delta",
                     {**at, "delta": call["arguments"]}),
                    ("response.function_call_arguments.done",
                     {**at, "name": call["name"], "arguments": call["arguments"]}),
                    ("response.output_item.done", {"output_index": 0, "item": call}),
                ]  # fmt: skip
            else:
                text = "".join(self.text)
                message = self._message(True)
                out += [
                    ("response.output_text.done", {**item, "text": text, "logprobs": []}),
                    ("response.content_part.done", {**item, "part": message["content"][0]}),
                    ("response.output_item.done", {"output_index": 0, "item": message}),
                ]
        out.append((last, {"response": self.body()}))
        return out


async def _sse(
    host: FrontendHost, view: ResponseView, starting_after: int = -1
) -> AsyncIterator[bytes]:
    """The numbered Responses events of the task, those after ``starting_after``."""
    seq = 0

    def frames(batch: list[tuple[str, dict[str, Any]]]) -> bytes:
        nonlocal seq
        out = []
        for kind, data in batch:
            if seq > starting_after:
                payload = {"type": kind, "sequence_number": seq, **data}
                out.append(
                    b"event: " + kind.encode() + b"\ndata: " + _json.encode(payload) + b"\n\n"
                )
            seq += 1
        return b"".join(out)

    if chunk := frames(view.feed(None)):
        yield chunk
    async for _, ev in host.events(view.rec):
        if chunk := frames(view.feed(ev)):
            yield chunk


def _text_parts(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, "content must be text", param=where, code="invalid_value")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in (
            "input_text",
            "output_text",
            "text",
        ):
            raise ApiError(
                400, "only text content is supported", param=f"{where}[{j}]",
                code="unsupported_parameter",
            )  # fmt: skip
        texts.append(str(part.get("text", "")))
    return "".join(texts)


def _input(req: ResponsesRequest) -> list[OrchMessage]:
    """The conversation as plain turns: message items, and earlier calls and their
    outputs as the facade asks the model to write and read them (ORCH-9271)."""
    out: list[OrchMessage] = []
    if req.instructions:
        out.append(OrchMessage(role="system", content=req.instructions))
    items = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
    called = {  # call_id -> function name, wherever the call sits in the input
        str(it.get("call_id")): str(it.get("name"))
        for it in items
        if isinstance(it, dict) and it.get("type") == "function_call"
    }
    for i, item in enumerate(items):
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "function_call":
            name = item.get("name")
            if not isinstance(name, str):
                raise ApiError(
                    400, "a function_call item needs `name`", param=f"input[{i}].name",
                    code="invalid_value",
                )  # fmt: skip
            call = call_text(name, item.get("arguments", {}))
            if out and out[-1].role == "assistant":  # the same answer's text and call
                out[-1] = OrchMessage(role="assistant", content=out[-1].content + "\n" + call)
            else:
                out.append(OrchMessage(role="assistant", content=call))
            continue
        if kind == "function_call_output":
            call_id = str(item.get("call_id", ""))
            name = called.get(call_id) or item.get("name") or "the function"
            result = _text_parts(item.get("output", ""), f"input[{i}].output")
            out.append(OrchMessage(role="user", content=f"Result of {name}:\n{result}"))
            continue
        role = item.get("role") if isinstance(item, dict) else None
        if kind != "message" or role not in ("system", "developer", "user", "assistant"):
            raise ApiError(
                400, "only message, function_call and function_call_output items are"
                " supported", param=f"input[{i}]", code="unsupported_parameter",
            )  # fmt: skip
        content = _text_parts(item.get("content"), f"input[{i}].content")
        out.append(OrchMessage(role="system" if role == "developer" else role, content=content))
    if not out:
        raise ApiError(400, "`input` must not be empty", param="input", code="invalid_value")
    return out


def _unsupported(req: ResponsesRequest) -> None:
    for name in ("previous_response_id", "conversation"):
        if getattr(req, name):
            raise ApiError(
                400, f"`{name}` is not supported by llama-orch", param=name,
                code="unsupported_parameter",
            )  # fmt: skip


async def _own(host: FrontendHost, request: Request) -> TaskRecord:
    """The response's task, whichever instance created it (ORCH-2593)."""
    rid: str = request.path_params["response_id"]
    who = host.principal(request, "openai")  # the Responses API is OpenAI's (ORCH-8017)
    tenant = who.tenant if who.role is not None else None
    rec = await host.find(rid.removeprefix(_PREFIX), tenant) if rid.startswith(_PREFIX) else None
    if rec is None:
        raise ApiError(404, f"No response found with id '{rid}'.", param=None, code="not_found")
    return rec


async def _snapshot(host: FrontendHost, known: Backgrounds, rec: TaskRecord) -> ResponseView:
    view = ResponseView(rec, known.get(rec))
    view.feed(None)
    for ev in await host.events_so_far(rec):  # with a store, its log (ORCH-2593)
        view.feed(ev)
    return view


async def create(request: Request) -> Response:
    host = FrontendHost.of(request)
    state = host.state(FrontendState)
    facade, known = state.responses, state.backgrounds
    facade.received()
    pool: Pool | None = None
    try:
        who = host.principal(request, facade.api)
        req = decode_body(
            await request.body(), ResponsesRequest, StrictResponsesRequest,
            facade.strict(request),
        )  # fmt: skip
        pool = resolve_model(host, req.model)
        _unsupported(req)
        plan = responses_plan(req.tools, req.tool_choice)  # ORCH-9270
        text_format = (req.text or {}).get("format")
        text_schema = text_format_schema(text_format)
        # ORCH-9242, ORCH-9276: the engine fields, or a 400 naming what the pool cannot
        engine = await tool_fields(host, pool, plan, req.model, facade.api, text_schema)
        extras = extras_from(
            request,
            {k: str(v) for k, v in (req.metadata or {}).items()},
            {"priority": req.priority, "deadline_ms": req.deadline_ms,
             "session_id": req.session_id},
        )  # fmt: skip
        fields = {
            "workload": "chat",
            "messages": plan.with_instructions(_input(req)) if plan else _input(req),
            "max_tokens": req.max_output_tokens,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "top_p": req.top_p,
            "seed": req.seed,
        }
        meta = ResponseMeta(
            req.model, req.background, plan, req.tools, req.tool_choice,
            text_format if text_schema is not None else None,  # held to it (ORCH-9276)
        )  # fmt: skip
        # with a store, the response's own fields are stored with the task (ORCH-2592)
        note = known.note(meta)
        rec = await facade.admit(
            request, pool, extras, who.tenant, fields, engine, note,
            stream=bool(req.stream),  # ORCH-9117, ORCH-9118: checked before admission
        )  # fmt: skip
    except ApiError as exc:
        return facade.api_error(exc, pool)
    except OrchError as exc:
        return facade.orch_error(exc)
    known.add(rec.task_id, meta)
    headers = facade.task_headers(rec)
    view = ResponseView(rec, meta)
    if req.stream:
        if req.background:  # counted and cut, never canceled by its reader (ORCH-9118, 9119)
            return BoundedStream(_sse(host, view), host, rec, headers)  # runs on (ORCH-9141)
        return TaskStreamResponse(_sse(host, view), host, rec, headers)
    if req.background:
        view.feed(None)
        return Response(_json.encode(view.body()), headers=headers, media_type="application/json")

    async def produce() -> tuple[int, bytes, dict[str, str]]:
        view.feed(None)
        async for _, ev in host.events(rec):
            view.feed(ev)
        return 200, _json.encode(view.body()), headers

    return TaskResponse(produce, host, rec)


async def retrieve(request: Request) -> Response:
    host = FrontendHost.of(request)
    state = host.state(FrontendState)
    facade, known = state.responses, state.backgrounds
    try:
        rec = await _own(host, request)
        stream = request.query_params.get("stream", "false").lower() == "true"
        after = request.query_params.get("starting_after")
        try:
            starting_after = int(after) if after is not None else -1
        except ValueError:
            raise ApiError(
                400, "starting_after must be an integer", param="starting_after",
                code="invalid_value",
            ) from None  # fmt: skip
    except ApiError as exc:
        return facade.render(exc.status, exc.message, exc.param, exc.code, {})
    except OrchError as exc:
        return facade.orch_error(exc)
    if stream:  # a reader: leaving or being cut does not cancel the task (ORCH-9119)
        try:  # ORCH-9118: one of the tenant's open streams, checked before any event is read
            host.check_stream(rec.tenant)
        except OrchError as exc:
            return facade.orch_error(exc)
        view = ResponseView(rec, known.get(rec))
        return BoundedStream(_sse(host, view, starting_after), host, rec, facade.task_headers(rec))
    view = await _snapshot(host, known, rec)
    return Response(_json.encode(view.body()), media_type="application/json")


async def cancel(request: Request) -> Response:
    host = FrontendHost.of(request)
    state = host.state(FrontendState)
    facade, known = state.responses, state.backgrounds
    try:
        rec = await _own(host, request)
    except ApiError as exc:
        return facade.render(exc.status, exc.message, exc.param, exc.code, {})
    except OrchError as exc:
        return facade.orch_error(exc)
    # ORCH-9143: the task ends canceled, its slot is freed; with a store, on whichever
    # instance runs it, and the answer waits for the store's terminal (ORCH-2593)
    await host.cancel_now(rec)
    view = await _snapshot(host, known, rec)
    return Response(_json.encode(view.body()), media_type="application/json")


ROUTES = [
    Route("/v1/responses", create, methods=["POST"]),
    Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
    Route("/v1/responses/{response_id}/cancel", cancel, methods=["POST"]),
]
