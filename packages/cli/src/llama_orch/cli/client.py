"""Typed async client for the OrchQueue v1 API of orchestratord.

One :class:`OrchClient` owns one aiohttp session. Requests are
``llama_orch.core.api`` structs encoded with msgspec; answers are decoded
into the same structs; every non-2xx answer becomes :class:`ApiError` and
every transport failure :class:`ConnectionFailed`, so no aiohttp exception
leaves this module (STYLE rule 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar, cast, get_args, overload
from urllib.parse import quote, urlencode

import aiohttp
import msgspec
from llama_orch.core.api import (
    EndEvent,
    ErrorEvent,
    SessionInfo,
    StreamEvent,
    TaskAccepted,
    TaskRequest,
)
from llama_orch.core.errors import ErrorBody
from llama_orch.core.sse import SSEParser

from .errors import ApiError, ConnectionFailed, InvalidRequest, ProtocolError, StreamInterrupted
from .models import Capabilities, PoolHealth, TaskStatus

__all__ = ["DEFAULT_URL", "OrchClient", "SubmittedTask"]

DEFAULT_URL = "http://127.0.0.1:8080"
CORRELATION_HEADER = "X-Correlation-Id"

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_error_body = msgspec.json.Decoder(ErrorBody)
_any = msgspec.json.Decoder()
# The SSE ``event:`` name is the tag of the StreamEvent union (ORCH-1201).
_event_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    cls.__struct_config__.tag: msgspec.json.Decoder(cls) for cls in get_args(StreamEvent)
}
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls)
    for cls in (TaskAccepted, TaskStatus, SessionInfo, Capabilities, PoolHealth)
}


class OrchClient:
    """``async with OrchClient(url, api_key=key) as orch: await orch.submit(prompt="hi")``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        correlation_id: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        reconnect_delay: float = 0.5,
        max_reconnects: int = 10,
        max_retries: int = 2,
        max_retry_wait_s: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.correlation_id = correlation_id
        self._api_key = api_key  # sent, never printed or logged (ORCH-8020)
        self.last_correlation_id: str | None = None
        self._timeout = timeout
        self._reconnect_delay = reconnect_delay
        self._max_reconnects = max_reconnects
        # ORCH-5010: a refused submit (429/503 with a delay) is sent again after the
        # delay the server gave, with the same Idempotency-Key, at most this often
        self._max_retries = max_retries
        self._max_retry_wait_s = max_retry_wait_s
        self.retry_waits: list[float] = []  # the delays slept, for callers and tests
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        headers = {CORRELATION_HEADER: self.correlation_id} if self.correlation_id else {}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self._http = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self._timeout)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- data plane ---------------------------------------------------------

    async def submit(self, **fields: Any) -> TaskAccepted:
        """``POST /v1/tasks`` with the given :class:`TaskRequest` fields; a refusal
        that names a delay is retried after it (ORCH-5010, see :meth:`_retrying`)."""
        try:
            request = msgspec.convert(fields, TaskRequest)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(str(exc)) from exc
        body = _encoder.encode(request)

        def attempt(key: dict[str, str]) -> Awaitable[TaskAccepted]:
            return self._call("POST", "/v1/tasks", TaskAccepted, body=body, extra_headers=key)

        return await self._retrying(attempt)

    async def _retrying(self, attempt: Callable[[dict[str, str]], Awaitable[T]]) -> T:
        """Run ``attempt`` with one ``Idempotency-Key`` for all its tries (ORCH-5010).

        A 429 or 503 that gives a delay (the body's ``retry_after_ms``, else
        ``Retry-After``) of at most ``max_retry_wait_s`` is tried again after exactly
        that delay, up to ``max_retries`` times: the server keeps a place in its queue
        for a client that comes back with the same key when it was told to
        (ORCH-1978..1981). Any other refusal, or the last one, is raised."""
        key = {"Idempotency-Key": uuid.uuid4().hex}
        for tries in itertools.count():
            try:
                return await attempt(key)
            except ApiError as exc:
                wait = _retry_delay(exc)
                if (
                    tries >= self._max_retries
                    or exc.status not in (429, 503)
                    or wait is None
                    or wait > self._max_retry_wait_s
                ):
                    raise
                self.retry_waits.append(wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def submit_stream(self, *, resume: bool = True, **fields: Any) -> SubmittedTask:
        """``POST /v1/tasks`` with ``Accept: text/event-stream``: admit and stream in one
        request (ORCH-2710, ORCH-2713). The answer's :meth:`SubmittedTask.events` yields
        ``(event id, event)`` like :meth:`stream`; a dropped connection is resumed on the
        stream route with ``Last-Event-ID`` when ``resume``. Refusals raise
        :class:`ApiError` as :meth:`submit` does."""
        try:
            request = msgspec.convert(fields, TaskRequest)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(str(exc)) from exc
        body = _encoder.encode(request)

        def attempt(key: dict[str, str]) -> Awaitable[SubmittedTask]:
            return self._submit_stream(body, key, resume)

        return await self._retrying(attempt)

    async def _submit_stream(self, body: bytes, key: dict[str, str], resume: bool) -> SubmittedTask:
        url = self.base_url + "/v1/tasks"
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **key}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout)
        try:
            resp = await self._session.post(url, data=body, headers=headers, timeout=timeout)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise ConnectionFailed(_describe(exc, url)) from exc
        self._note_correlation(resp.headers)
        if resp.status == 200 and "X-Task-Id" in resp.headers:
            return SubmittedTask(self, resp.headers["X-Task-Id"], resp, resume=resume)
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise ConnectionFailed(_describe(exc, url)) from exc
        finally:
            resp.release()
        if resp.status >= 300:
            raise self._api_error(resp.status, resp.headers, raw)
        raise ProtocolError(f"POST /v1/tasks: expected an event stream, got HTTP {resp.status}")

    async def task(self, task_id: str) -> TaskStatus:
        return await self._call("GET", f"/v1/tasks/{task_id}", TaskStatus)

    async def cancel(self, task_id: str) -> None:
        await self._call("POST", f"/v1/tasks/{task_id}/cancel", None)

    async def session(self, session_id: str) -> SessionInfo:
        return await self._call("GET", f"/v1/sessions/{session_id}", SessionInfo)

    async def delete_session(self, session_id: str) -> None:
        await self._call("DELETE", f"/v1/sessions/{session_id}", None)

    async def stream(
        self,
        task_id: str,
        last_event_id: int | None = None,
        *,
        resume: bool = False,
        admin: bool = False,
    ) -> AsyncGenerator[tuple[int, StreamEvent], None]:
        """Yield ``(event id, event)`` until ``end`` or ``error`` (inclusive).

        With ``resume=True`` a dropped connection is reopened with
        ``Last-Event-ID`` set to the last id received, and any event the
        server repeats is skipped, so every event arrives exactly once and in
        order (ORCH-5004). Without it a drop raises :class:`StreamInterrupted`.
        ``admin=True`` reads any tenant's task through the operator route (ORCH-5122).
        """
        prefix = "/v1/admin/tasks" if admin else "/v1/tasks"
        last_id = last_event_id
        failures = 0
        while True:
            try:
                async with contextlib.aclosing(
                    self._stream_once(prefix, task_id, last_id)
                ) as frames:
                    async for event_id, event in frames:
                        if last_id is not None and event_id <= last_id:
                            continue  # already delivered before the reconnect
                        last_id, failures = event_id, 0
                        yield event_id, event
                        if isinstance(event, EndEvent | ErrorEvent):
                            return
                reason = "the stream closed before its end event"
            except ConnectionFailed as exc:
                reason = str(exc)
            failures += 1
            if not resume or failures > self._max_reconnects:
                raise StreamInterrupted(
                    f"stream of task {task_id} interrupted: {reason}", last_event_id=last_id
                )
            await asyncio.sleep(self._reconnect_delay * min(failures, 4))

    async def _stream_once(
        self, prefix: str, task_id: str, last_id: int | None
    ) -> AsyncGenerator[tuple[int, StreamEvent], None]:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        # No total or read timeout: a task may wait in the queue for a long time.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout)
        url = f"{self.base_url}{prefix}/{task_id}/stream"
        try:
            async with self._session.get(url, headers=headers, timeout=timeout) as resp:
                self._note_correlation(resp.headers)
                if resp.status != 200:
                    raise self._api_error(resp.status, resp.headers, await resp.read())
                async for item in _frames(resp):
                    yield item
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise ConnectionFailed(_describe(exc, url)) from exc

    # -- control plane ------------------------------------------------------

    async def capabilities(self) -> Capabilities:
        return await self._call("GET", "/v1/capabilities", Capabilities)

    async def pool_health(self, pool_id: str) -> PoolHealth:
        """Health of one pool; a 503 that carries a health document is not an error."""
        path = f"/v1/pools/{pool_id}/health"
        status, headers, raw = await self._request("GET", path)
        if status == 503:
            with contextlib.suppress(ProtocolError):
                return self._decode(PoolHealth, raw, f"GET {path}")
        if status >= 300:
            raise self._api_error(status, headers, raw)
        return self._decode(PoolHealth, raw, f"GET {path}")

    async def drain(self, pool_id: str, deadline_ms: int | None = None) -> Any:
        body = {} if deadline_ms is None else {"deadline_ms": deadline_ms}
        return await self._json("POST", f"/v1/pools/{pool_id}/drain", body)

    async def reload(self, pool_id: str, model_ref: str, digest: str | None = None) -> Any:
        body: dict[str, Any] = {"new_model_ref": model_ref}
        if digest is not None:
            body["model_digest"] = digest
        return await self._json("POST", f"/v1/pools/{pool_id}/reload", body)

    async def reset(self, pool_id: str) -> Any:
        return await self._json("POST", f"/v1/pools/{pool_id}/reset")

    # -- model catalog (admin key; .specs/33-catalog.md) ---------------------

    async def catalog_models(self) -> Any:
        return await self._json("GET", "/v1/catalog/models")

    async def catalog_model(self, model_id: str) -> Any:
        return await self._json("GET", f"/v1/catalog/models/{model_id}")

    async def catalog_add(self, **fields: Any) -> Any:
        return await self._json("POST", "/v1/catalog/models", fields)

    async def catalog_add_stream(self, **fields: Any) -> AsyncIterator[tuple[str, Any]]:
        """``POST /v1/catalog/models`` with ``Accept: text/event-stream`` (ORCH-3375):
        yields ``("progress", {message, done_bytes, total_bytes})`` while the daemon
        fetches and verifies, then ``("registered", entry)``; a refusal, before or
        in the stream, raises :class:`ApiError` with the refusal's status."""
        url = self.base_url + "/v1/catalog/models"
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        ended = False
        try:
            async with self._session.post(
                url, data=_encoder.encode(fields), headers=headers
            ) as resp:
                self._note_correlation(resp.headers)
                if resp.status >= 300:
                    raise self._api_error(resp.status, resp.headers, await resp.read())
                parser = SSEParser()
                async for chunk in resp.content.iter_any():
                    for msg in parser.feed(chunk):
                        try:
                            data = _any.decode(msg.data)
                        except msgspec.DecodeError as exc:
                            raise ProtocolError(f"POST {url}: bad event: {exc}") from exc
                        if msg.event == "error":
                            status = int(data.pop("status", 500))
                            raise self._api_error(status, resp.headers, _encoder.encode(data))
                        ended = msg.event == "registered"
                        yield msg.event, data
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise ConnectionFailed(_describe(exc, url)) from exc
        if not ended:
            raise ProtocolError(f"POST {url}: the registration stream ended without its result")

    async def catalog_action(self, model_id: str, action: str, body: Any = None) -> Any:
        """``verify``, ``state``, ``promote`` or ``rollback`` of one entry."""
        return await self._json("POST", f"/v1/catalog/models/{model_id}/{action}", body)

    # -- operator views (admin key; ORCH-5120..5124) -------------------------
    # Answered as plain JSON documents: the CLI prints them as they are with
    # ``--json``, and their shapes are the schemas of control.yaml.

    async def policies(self) -> Any:
        """The running policies and hooks (ORCH-8572)."""
        return await self._json("GET", "/v1/policies")

    async def reload_policies(self, section: dict[str, Any]) -> Any:
        """Swap in a ``policies`` section (ORCH-8571); the running set stays on a 400."""
        return await self._json("POST", "/v1/policies/reload", section)

    async def admin_status(self) -> Any:
        return await self._json("GET", "/v1/admin/status")

    async def admin_tasks(self, **filters: str | int | None) -> Any:
        query = urlencode({k: v for k, v in filters.items() if v is not None})
        return await self._json("GET", "/v1/admin/tasks" + (f"?{query}" if query else ""))

    async def admin_task(self, task_id: str) -> Any:
        return await self._json("GET", f"/v1/admin/tasks/{quote(task_id, safe='')}")

    async def admin_cancel(self, task_id: str) -> None:
        await self._call("POST", f"/v1/admin/tasks/{quote(task_id, safe='')}/cancel", None)

    async def admin_sessions(self) -> Any:
        return await self._json("GET", "/v1/admin/sessions")

    # -- plumbing -----------------------------------------------------------

    @property
    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("use OrchClient as an async context manager")
        return self._http

    @overload
    async def _call(
        self,
        method: str,
        path: str,
        type_: type[T],
        *,
        body: bytes | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> T: ...
    @overload
    async def _call(
        self,
        method: str,
        path: str,
        type_: None,
        *,
        body: bytes | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None: ...
    async def _call(
        self,
        method: str,
        path: str,
        type_: type[T] | None,
        *,
        body: bytes | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> T | None:
        status, headers, raw = await self._request(method, path, body, extra_headers)
        if status >= 300:
            raise self._api_error(status, headers, raw)
        if type_ is None:
            return None
        return self._decode(type_, raw, f"{method} {path}")

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        url = self.base_url + path
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if extra:
            headers.update(extra)
        try:
            async with self._session.request(method, url, data=body, headers=headers) as resp:
                self._note_correlation(resp.headers)
                return resp.status, resp.headers, await resp.read()
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise ConnectionFailed(_describe(exc, url)) from exc

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        raw_body = None if body is None else _encoder.encode(body)
        status, headers, raw = await self._request(method, path, raw_body)
        if status >= 300:
            raise self._api_error(status, headers, raw)
        try:
            return _any.decode(raw)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"{method} {path}: unexpected answer: {exc}") from exc

    @staticmethod
    def _decode(type_: type[T], raw: bytes, what: str) -> T:
        try:
            # the table maps each type to its own decoder, which a dict type cannot say
            return cast(T, _decoders[type_].decode(raw))
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"{what}: unexpected answer: {exc}") from exc

    def _note_correlation(self, headers: Mapping[str, str]) -> None:
        self.last_correlation_id = headers.get(CORRELATION_HEADER, self.last_correlation_id)

    @staticmethod
    def _api_error(status: int, headers: Mapping[str, str], raw: bytes) -> ApiError:
        body: ErrorBody | None = None
        code, message = f"HTTP_{status}", raw.decode(errors="replace")[:500]
        try:
            body = _error_body.decode(raw)
            code, message = str(body.code), body.message
        except msgspec.DecodeError:
            # An envelope with a code this client does not know is still useful.
            with contextlib.suppress(msgspec.DecodeError):
                doc = _any.decode(raw)
                if isinstance(doc, dict) and "code" in doc:
                    code, message = str(doc["code"]), str(doc.get("message", ""))
        return ApiError(
            status,
            code=code,
            message=message,
            body=body,
            retry_after_s=_number(headers.get("Retry-After"), float),
            backoff_ms=_number(headers.get("X-Backoff-Ms"), int),
            correlation_id=headers.get(CORRELATION_HEADER),
        )


class SubmittedTask:
    """A task admitted by :meth:`OrchClient.submit_stream`, its events in the same answer."""

    def __init__(
        self, client: OrchClient, task_id: str, resp: aiohttp.ClientResponse, *, resume: bool
    ) -> None:
        self.task_id = task_id
        self._client = client
        self._resp = resp
        self._resume = resume

    async def events(self) -> AsyncGenerator[tuple[int, StreamEvent], None]:
        """``(event id, event)`` until ``end`` or ``error`` (inclusive), exactly once each."""
        last_id: int | None = None
        try:
            async for event_id, event in _frames(self._resp):
                last_id = event_id
                yield event_id, event
                if isinstance(event, EndEvent | ErrorEvent):
                    return
            reason = "the stream closed before its end event"
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            reason = _describe(exc, self._client.base_url + "/v1/tasks")
        finally:
            self._resp.close()
        if not self._resume:
            raise StreamInterrupted(
                f"stream of task {self.task_id} interrupted: {reason}", last_event_id=last_id
            )
        async with contextlib.aclosing(
            self._client.stream(self.task_id, last_id, resume=True)
        ) as rest:
            async for item in rest:
                yield item

    def close(self) -> None:
        self._resp.close()


async def _frames(resp: aiohttp.ClientResponse) -> AsyncGenerator[tuple[int, StreamEvent], None]:
    """The task events of one SSE response (ORCH-1201)."""
    parser = SSEParser()
    async for chunk in resp.content.iter_any():
        for msg in parser.feed(chunk):
            decoder = _event_decoders.get(msg.event)
            if decoder is None:
                continue  # an event kind this client does not know yet
            if msg.id is None or not msg.id.isdigit():
                raise ProtocolError(f"SSE {msg.event!r} frame without numeric id")
            try:
                event = decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                raise ProtocolError(f"bad {msg.event!r} event: {exc}") from exc
            yield int(msg.id), event


def _retry_delay(exc: ApiError) -> float | None:
    """Seconds the server asked a refused client to wait, the most precise first."""
    if exc.body is not None and exc.body.retry_after_ms is not None:
        return exc.body.retry_after_ms / 1000
    return exc.retry_after_s


def _number(value: str | None, kind: Callable[[str], T]) -> T | None:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        return None  # e.g. an HTTP-date Retry-After; the body's retry_after_ms still counts


def _describe(exc: BaseException, url: str) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {url}: {exc.os_error or exc}"
    if isinstance(exc, TimeoutError):
        return f"timed out talking to {url}"
    return f"{type(exc).__name__} from {url}: {exc}"
