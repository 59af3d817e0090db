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
from llama_orch.core.api import EndEvent, ErrorEvent, StartedEvent, StreamEvent, TokenEvent
from llama_orch.core.errors import OrchError
from llama_orch.orchestratord.frontends import FrontendHost
from llama_orch.orchestratord.pools import Pool
from llama_orch.orchestratord.tasks import TaskRecord
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ._common import (
    ApiError,
    TaskResponse,
    TaskStreamResponse,
    completion_tokens,
    extras_from,
    resolve_model,
)
from ._flow import Backgrounds, FrontendState, decode_body
from ._wire import ResponsesRequest, StrictResponsesRequest

__all__ = ["ROUTES"]

_json = msgspec.json.Encoder()
_PREFIX = "resp_"


class ResponseView:
    """The Responses-API view of one task, built by feeding it the task's events."""

    def __init__(self, rec: TaskRecord, model: str, background: bool) -> None:
        self.rec, self.model, self.background = rec, model, background
        self.text: list[str] = []
        self.status = "queued"
        self.end: EndEvent | None = None
        self.error: ErrorEvent | None = None
        self.started = False

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
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            }
        error = None
        if self.error is not None:
            error = {"code": "server_error", "message": self.error.message}
        return {
            "id": _PREFIX + self.rec.task_id,
            "object": "response",
            "created_at": int(self.rec.created_wall),
            "status": self.status,
            "background": self.background,
            "model": self.model,
            "output": [self._message(done)] if self.started else [],
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
            "tool_choice": "none",
            "tools": [],
            "text": {"format": {"type": "text"}},
        }

    def feed(self, ev: StreamEvent | None) -> list[tuple[str, dict[str, Any]]]:
        """The Responses events one task event makes (``None``: the first call)."""
        item = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        if ev is None:
            kind = "response.queued" if self.background else "response.created"
            return [(kind, {"response": self.body()})]
        if isinstance(ev, StartedEvent):
            self.started, self.status = True, "in_progress"
            empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            return [
                ("response.in_progress", {"response": self.body()}),
                ("response.output_item.added", {"output_index": 0, "item": self._message(False)}),
                ("response.content_part.added", {**item, "part": empty}),
            ]
        if isinstance(ev, TokenEvent):
            self.text.append(ev.t)
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
            text = "".join(self.text)
            out += [
                ("response.output_text.done", {**item, "text": text, "logprobs": []}),
                ("response.content_part.done", {**item, "part": self._message(True)["content"][0]}),
                ("response.output_item.done", {"output_index": 0, "item": self._message(True)}),
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


def _input(req: ResponsesRequest) -> list[Any]:
    from llama_orch.core.api import ChatMessage as OrchMessage

    out = []
    if req.instructions:
        out.append(OrchMessage(role="system", content=req.instructions))
    items = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
    for i, item in enumerate(items):
        role = item.get("role") if isinstance(item, dict) else None
        if item.get("type", "message") != "message" or role not in (
            "system", "developer", "user", "assistant",
        ):  # fmt: skip
            raise ApiError(
                400, "only message items with a role are supported", param=f"input[{i}]",
                code="unsupported_parameter",
            )  # fmt: skip
        content = item.get("content")
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in (
                    "input_text",
                    "output_text",
                    "text",
                ):
                    raise ApiError(
                        400, "only text content is supported", param=f"input[{i}].content[{j}]",
                        code="unsupported_parameter",
                    )  # fmt: skip
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        if not isinstance(content, str):
            raise ApiError(
                400, "content must be text", param=f"input[{i}].content", code="invalid_value"
            )
        out.append(OrchMessage(role="system" if role == "developer" else role, content=content))
    if not out:
        raise ApiError(400, "`input` must not be empty", param="input", code="invalid_value")
    return out


def _unsupported(req: ResponsesRequest) -> None:
    for name in ("tools", "previous_response_id", "conversation"):
        if getattr(req, name):
            raise ApiError(
                400, f"`{name}` is not supported by llama-orch", param=name,
                code="unsupported_parameter",
            )  # fmt: skip
    fmt = (req.text or {}).get("format") or {"type": "text"}
    if fmt.get("type") != "text":
        raise ApiError(
            400, "`text.format` other than text is not supported by this pool's engine",
            param="text.format", code="unsupported_parameter",
        )  # fmt: skip
    if req.tool_choice not in (None, "none", "auto"):
        raise ApiError(
            400, "`tool_choice` needs tools", param="tool_choice", code="unsupported_parameter"
        )


def _own(host: FrontendHost, request: Request) -> TaskRecord:
    rid: str = request.path_params["response_id"]
    who = host.principal(request)
    rec = host.task(rid.removeprefix(_PREFIX), who.tenant if who.role is not None else None)
    if rec is None or not rid.startswith(_PREFIX):
        raise ApiError(404, f"No response found with id '{rid}'.", param=None, code="not_found")
    return rec


async def _snapshot(host: FrontendHost, known: Backgrounds, rec: TaskRecord) -> ResponseView:
    model, background = known.get(rec.task_id, rec.pool_id)
    view = ResponseView(rec, model, background)
    view.feed(None)
    for ev in host.events_now(rec):
        view.feed(ev)
    return view


async def create(request: Request) -> Response:
    host = FrontendHost.of(request)
    state = host.state(FrontendState)
    facade, known = state.responses, state.backgrounds
    facade.received()
    pool: Pool | None = None
    try:
        who = host.principal(request)
        req = decode_body(
            await request.body(), ResponsesRequest, StrictResponsesRequest,
            facade.strict(request),
        )  # fmt: skip
        pool = resolve_model(host, req.model)
        _unsupported(req)
        extras = extras_from(
            request,
            {k: str(v) for k, v in (req.metadata or {}).items()},
            {"priority": req.priority, "deadline_ms": req.deadline_ms,
             "session_id": req.session_id},
        )  # fmt: skip
        fields = {
            "workload": "chat",
            "messages": _input(req),
            "max_tokens": req.max_output_tokens,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "top_p": req.top_p,
            "seed": req.seed,
        }
        rec = await facade.admit(request, pool, extras, who.tenant, fields)
    except ApiError as exc:
        return facade.api_error(exc, pool)
    except OrchError as exc:
        return facade.orch_error(exc)
    known.add(rec.task_id, req.model, req.background)
    headers = facade.task_headers(rec)
    view = ResponseView(rec, req.model, req.background)
    if req.stream:
        if req.background:  # runs whether or not this client stays (ORCH-9141)
            return StreamingResponse(
                _sse(host, view), media_type="text/event-stream", headers=headers
            )
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
        rec = _own(host, request)
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
    model, background = known.get(rec.task_id, rec.pool_id)
    if stream:  # a reader: leaving does not cancel the task (ORCH-9142)
        view = ResponseView(rec, model, background)
        return StreamingResponse(
            _sse(host, view, starting_after),
            media_type="text/event-stream",
            headers=facade.task_headers(rec),
        )
    view = await _snapshot(host, known, rec)
    return Response(_json.encode(view.body()), media_type="application/json")


async def cancel(request: Request) -> Response:
    host = FrontendHost.of(request)
    state = host.state(FrontendState)
    facade, known = state.responses, state.backgrounds
    try:
        rec = _own(host, request)
    except ApiError as exc:
        return facade.render(exc.status, exc.message, exc.param, exc.code, {})
    except OrchError as exc:
        return facade.orch_error(exc)
    host.cancel(rec)  # ORCH-9143: the task ends canceled, its slot is freed
    view = await _snapshot(host, known, rec)
    return Response(_json.encode(view.body()), media_type="application/json")


ROUTES = [
    Route("/v1/responses", create, methods=["POST"]),
    Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
    Route("/v1/responses/{response_id}/cancel", cancel, methods=["POST"]),
]
