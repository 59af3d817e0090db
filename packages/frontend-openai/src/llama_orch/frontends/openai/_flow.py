"""One facade request, from body to task: decode, authenticate, resolve the
model, admit through the host, and render every failure in the facade's own
error shape (ORCH-9114). Both facades use it; they differ in their wire types
and in how an error looks."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from llama_orch.core.adapter_api import Capability
from llama_orch.core.api import TaskRequest
from llama_orch.core.errors import HTTP_STATUS, ErrorCode, OrchError
from llama_orch.orchestratord.frontends import FrontendHost
from llama_orch.orchestratord.pools import Pool
from llama_orch.orchestratord.tasks import TaskRecord
from llama_orch.orchestratord.tracing import CORRELATION_ID
from starlette.requests import Request
from starlette.responses import Response

from ._common import (
    TASK_ID_HEADER,
    ApiError,
    Extras,
    error_param,
    is_retry_later,
    retry_headers,
)
from ._engine import EngineFields
from ._tools import ToolPlan, responses_plan

__all__ = [
    "Backgrounds",
    "ErrorRenderer",
    "Facade",
    "FrontendState",
    "ResponseMeta",
    "decode_body",
]

_log = logging.getLogger("llama_orch.frontends.openai")
POLICY_LABEL_HEADER = "x-llorch-policy-label"
T = TypeVar("T")

# (status, message, param, code, headers) -> the facade's error response
ErrorRenderer = Callable[[int, str, "str | None", str, "dict[str, str]"], Response]

_ORCH_CODES = {
    ErrorCode.ADMISSION_REJECT: "rate_limit_exceeded",
    ErrorCode.QUEUE_FULL_DROP_LRU: "rate_limit_exceeded",
    ErrorCode.INVALID_PARAMS: "invalid_value",
    ErrorCode.UNAUTHENTICATED: "invalid_api_key",
}


def decode_body(body: bytes, lenient: type[T], strict: type[T], strict_mode: bool) -> T:
    """The request, or an ApiError naming the offending field."""
    try:
        return msgspec.json.decode(body, type=strict if strict_mode else lenient)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        param = msg.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in msg else None
        if param is None and "unknown field `" in msg:
            param = msg.split("unknown field `", 1)[1].split("`", 1)[0]
        raise ApiError(400, f"invalid request: {msg}", param=param, code="invalid_value") from exc
    except msgspec.DecodeError as exc:
        raise ApiError(
            400, f"the body is not valid JSON: {exc}", param=None, code="invalid_json"
        ) from exc


@dataclass
class Facade:
    """The parts of a request's life both facades share."""

    host: FrontendHost
    api: str  # "openai" | "anthropic": logs and counters
    render: ErrorRenderer

    def received(self) -> None:
        """A DEBUG line per request: with the refusal lines, an operator (or a test)
        sees when a client came back after being told to wait (ORCH-9111)."""
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "%s request received", self.api,
                extra={"api": self.api, "correlation_id": CORRELATION_ID.get()},
            )  # fmt: skip

    def strict(self, request: Request) -> bool:
        return request.headers.get("x-llorch-strict", "").lower() in ("1", "true")

    def task_headers(self, rec: TaskRecord) -> dict[str, str]:
        return {TASK_ID_HEADER: rec.task_id, "x-request-id": rec.task_id}

    def api_error(self, exc: ApiError, pool: Pool | None) -> Response:
        self.host.rejected(
            pool, ErrorCode.NOT_FOUND if exc.status == 404 else ErrorCode.INVALID_PARAMS, self.api
        )
        return self.render(
            exc.status, exc.message, exc.param, exc.code, {"x-should-retry": "false"}
        )

    def orch_error(self, exc: OrchError) -> Response:
        """An admission refusal, already counted by the daemon, in facade terms."""
        headers: dict[str, str] = {}
        status = exc.status_code
        if is_retry_later(exc):
            # the daemon's own backoff: a full queue's refusals are told reserved turns
            # (ORCH-1970..1984), the same for every API (ORCH-9111)
            delay = exc.retry_after_ms or 1000
            status, headers = retry_headers(delay)
            sent = int(headers["retry-after-ms"])  # ORCH-9260: what the client was told
            _log.info(
                "%s request refused (%s): retry after %d ms (predicted wait %d ms)",
                self.api, exc.code.value, sent, delay,
                extra={"retry_after_ms": sent, "predicted_wait_ms": delay, "api": self.api,
                       "correlation_id": CORRELATION_ID.get()},
            )  # fmt: skip
        label = getattr(exc, "policy_label", None)
        if label:  # ORCH-9116: the refusing policy (or quota) by name, as in the task API
            headers[POLICY_LABEL_HEADER] = label
        code = _ORCH_CODES.get(exc.code, exc.code.value.lower())
        if exc.code == ErrorCode.INVALID_PARAMS and "exceeds ctx" in exc.message:
            code = "context_length_exceeded"
        return self.render(status, exc.message, error_param(exc), code, headers)

    def event_error(self, code: ErrorCode | None, message: str) -> tuple[int, str]:
        """Status and facade code of a task that failed after admission; ``None``:
        canceled (by its owner, through the task API): 400, so no SDK retries it."""
        if code is None:
            return 400, "task_canceled"
        return HTTP_STATUS.get(code, 500), _ORCH_CODES.get(code, code.value.lower())

    async def admit(
        self,
        request: Request,
        pool: Pool,
        extras: Extras,
        tenant: str,
        fields: dict[str, Any],
        engine: EngineFields | None = None,
        note: bytes | None = None,
        *,
        stream: bool = False,
    ) -> TaskRecord:
        req = TaskRequest(
            pool_id=pool.id,
            # extras() let only "interactive" or "batch" through (a header is a str)
            priority=extras.priority or "interactive",  # type: ignore[arg-type]
            deadline_ms=extras.deadline_ms,
            session_id=extras.session_id,
            **{k: v for k, v in fields.items() if v is not None},
        )
        caps = await self.host.capabilities(pool)  # None: admission answers unready
        if caps is not None and Capability.EMBED_ONLY in caps:  # ORCH-9283
            raise ApiError(
                400, f"model `{pool.id}` serves embeddings only (its engine generates"
                " nothing): use /v1/embeddings", param="model", code="unsupported_parameter",
            )  # fmt: skip
        if stream:  # one of the tenant's open streams, checked before admission (ORCH-9117)
            self.host.check_stream(tenant)
        engine = engine or EngineFields()
        return await self.host.submit(
            req, tenant, api=self.api, json_schema=engine.json_schema, logprobs=engine.logprobs,
            idempotency_key=request.headers.get("idempotency-key"), attempt=retry_count(request),
            note=note,
        )  # fmt: skip


def retry_count(request: Request) -> int | None:
    """How many times the client retried this request, if it says (the official
    SDKs send ``x-stainless-retry-count``): 0 marks a first attempt, which redeems
    no retry reservation (ORCH-1979)."""
    raw = request.headers.get("x-stainless-retry-count", "")
    return int(raw) if raw.isdigit() else None


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """What a response was created with beyond its task: the model name it was asked
    for, ``background``, and the tool plan and ``text.format`` its output items and
    echo depend on (ORCH-9272, ORCH-9274)."""

    model: str
    background: bool = False
    plan: ToolPlan | None = None
    tools: list[Any] | None = None  # the request's tools and tool_choice, echoed
    tool_choice: Any = None
    text_format: dict[str, Any] | None = None


class StoredResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A response's own fields as a state store keeps them with its task (ORCH-2592):
    :class:`ResponseMeta` without the tool plan, which is made again from them."""

    model: str
    background: bool = False
    tools: list[Any] | None = None
    tool_choice: Any = None
    text_format: dict[str, Any] | None = None


_note_decoder = msgspec.json.Decoder(StoredResponse)
_note_encoder = msgspec.json.Encoder()


class Backgrounds:
    """How each response was created (:class:`ResponseMeta`), bounded like the task
    store (a forgotten task is a forgotten response). With a state store the same
    fields travel with the task (:meth:`note`), so any instance finds them."""

    def __init__(self, host: FrontendHost) -> None:
        self._meta: OrderedDict[str, ResponseMeta] = OrderedDict()
        self._host = host

    def note(self, meta: ResponseMeta) -> bytes | None:
        """The task's ``note`` for ``meta``: only with a state store (ORCH-2592)."""
        if self._host.orch.state is None:
            return None
        return _note_encoder.encode(
            StoredResponse(
                model=meta.model, background=meta.background, tools=meta.tools,
                tool_choice=meta.tool_choice, text_format=meta.text_format,
            )
        )  # fmt: skip

    def add(self, task_id: str, meta: ResponseMeta) -> None:
        self._meta[task_id] = meta
        while len(self._meta) > self._host.orch.config.admission.max_retained_tasks:
            self._meta.popitem(last=False)

    def get(self, rec: TaskRecord) -> ResponseMeta:
        """How the response of ``rec`` was created: as this instance recorded it, else
        as its task's stored note says (another instance created it, ORCH-2593)."""
        meta = self._meta.get(rec.task_id)
        if meta is not None:
            return meta
        if rec.note is None:
            return ResponseMeta(rec.pool_id)
        s = _note_decoder.decode(rec.note)
        plan = responses_plan(s.tools, s.tool_choice)  # valid: it was checked at create
        return ResponseMeta(s.model, s.background, plan, s.tools, s.tool_choice, s.text_format)


@dataclass(frozen=True)
class FrontendState:
    """This frontend's state in one application, attached to its
    :class:`FrontendHost` (``host.state(FrontendState)``): one facade per API, as
    before, and the background responses (ORCH-4122)."""

    openai: Facade
    responses: Facade
    anthropic: Facade
    backgrounds: Backgrounds
