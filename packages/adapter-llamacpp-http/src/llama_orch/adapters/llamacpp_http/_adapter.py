"""The llama.cpp ``llama-server`` adapter (native API, aiohttp).

One :class:`aiohttp.ClientSession` per adapter, created lazily inside the
running loop and closed by :meth:`LlamaCppHttpAdapter.aclose`.

Cancellation (ORCH-3006): llama-server has no cancel endpoint; it stops a
task when its client disconnects. So closing the ``generate`` iterator, or
cancelling the task consuming it, closes the HTTP response with
``resp.close()``: the socket is dropped, never returned half-read to the pool.
``cancel(task_id)`` does the same for a stream owned by another task.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

import aiohttp
import msgspec
from llama_orch.core.adapter_api import (
    AdapterEvent,
    AdapterTarget,
    Capability,
    EngineMetrics,
    EngineProps,
    Finished,
    GenerateRequest,
    Health,
    WorkerAdapter,
)
from llama_orch.core.errors import DecodeTimeout, InvalidParams, OrchError, WorkerReset
from llama_orch.core.prometheus import parse_prometheus

from ._errors import ENGINE, error_from_response, parse_error_body
from ._metrics import kv_usage_from_slots, to_engine_metrics
from ._options import LlamaCppOptions, parse_options
from ._stream import CompletionStream
from ._wire import (
    CompletionRequest,
    apply_template_decoder,
    encoder,
    props_decoder,
    tokenize_decoder,
)

__all__ = ["CANCELLED", "LlamaCppHttpAdapter"]

CANCELLED = "canceled"  # Finished.reason after cancel(task_id) (adapter_api, ORCH-3006)
_JSON = {"Content-Type": "application/json"}


class _CancelledByCaller(Exception):
    """Wakes a stream reader blocked on a response that cancel() closed."""


class _IdleTimeout(Exception):
    """Wakes a stream reader when the engine sent nothing for ``idle_timeout_s``."""


@dataclass(eq=False)
class _InFlight:
    """One open ``/completion`` stream.

    The idle timeout is one timer per stream, re-armed lazily: a read only
    stamps ``last_data``; when the timer fires early it moves itself to
    ``last_data + idle``. An ``asyncio.timeout`` around every read costs a
    timer-heap push and a cancel per token (5 % of orchestratord's CPU at 64
    streams, issue #5 profile).
    """

    resp: aiohttp.ClientResponse
    idle_s: float
    last_data: float = 0.0
    cancelled: bool = False
    timer: asyncio.TimerHandle | None = None

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self.last_data = loop.time()
        self.timer = loop.call_at(self.last_data + self.idle_s, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self.last_data + self.idle_s
        if loop.time() < due:
            self.timer = loop.call_at(due, self._check, loop)
            return
        self.timer = None
        self.resp.content.set_exception(_IdleTimeout())

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class LlamaCppHttpAdapter(WorkerAdapter):
    engine: ClassVar[str] = ENGINE

    def __init__(self, target: AdapterTarget) -> None:
        super().__init__(target)
        self.options: LlamaCppOptions = parse_options(dict(target.options))
        self._base = target.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, _InFlight] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.connect_timeout_s)
            # No connection cap: the pool's slot accounting bounds concurrency.
            # aiohttp's default (100) silently queued every stream beyond 100
            # inside the adapter, with the slot already counted as busy.
            # force_close: llama-server closes a connection soon after a
            # stream ends, but aiohttp pools it at EOF; the next POST then
            # failed with "Cannot write to closing transport" (found by the
            # conformance suite's back-to-back generations).
            connector = aiohttp.TCPConnector(limit=0, force_close=True)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session

    async def aclose(self) -> None:
        """Close every open stream (their readers get WorkerReset) and the session."""
        for inflight in list(self._inflight.values()):
            inflight.resp.content.set_exception(aiohttp.ClientConnectionError("adapter closed"))
            inflight.resp.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- plain request/response calls ------------------------------------
    async def _call(self, method: str, path: str, body: object | None = None) -> bytes:
        what = f"{method} {path}"
        data = encoder.encode(body) if body is not None else None
        try:
            async with asyncio.timeout(self.options.request_timeout_s):
                async with self._http().request(
                    method, self._base + path, data=data, headers=_JSON if data else None
                ) as resp:
                    payload = await resp.read()
                    status = resp.status
        except aiohttp.ClientError as exc:
            raise WorkerReset(f"{what}: {type(exc).__name__}: {exc}", engine=ENGINE) from exc
        except TimeoutError as exc:
            raise WorkerReset(
                f"{what}: no answer in {self.options.request_timeout_s}s", engine=ENGINE
            ) from exc
        if status != 200:
            raise error_from_response(status, payload, what)
        return payload

    async def health(self) -> Health:
        """ORCH-3003: 200 = ready; 503 = loading (live); unreachable = not live."""
        try:
            async with asyncio.timeout(self.options.health_timeout_s):
                async with self._http().get(self._base + "/health") as resp:
                    payload = await resp.read()
                    status = resp.status
        except Exception as exc:  # never raises: any failure means "not live"
            return Health(live=False, ready=False, detail=f"{type(exc).__name__}: {exc}")
        if status == 200:
            return Health(live=True, ready=True)
        err = parse_error_body(payload)
        detail = err.message if err and err.message else f"HTTP {status}"
        return Health(live=True, ready=False, detail=detail)

    async def props(self) -> EngineProps:
        """ORCH-3004: slots and per-slot ctx from the engine; version/digest from target."""
        payload = await self._call("GET", "/props")
        try:
            p = props_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise WorkerReset(f"GET /props: unexpected answer: {exc}", engine=ENGINE) from exc
        caps = {Capability.TOKENIZE, Capability.METRICS, Capability.SEEDED_SAMPLING}
        if p.chat_template:
            caps.add(Capability.CHAT_TEMPLATE)
        t = self.target
        return EngineProps(
            engine=ENGINE,
            engine_version=t.engine_version or p.build_info,
            model_ref=t.model_ref or p.model_alias or p.model_path,
            model_digest=t.model_digest,
            slots=p.total_slots,
            ctx=p.default_generation_settings.n_ctx,
            capabilities=frozenset(caps),
        )

    async def tokenize(self, text: str) -> list[int]:
        """ORCH-3008: counted like ``/completion`` counts a prompt (special tokens on)."""
        body = {"content": text, "add_special": True, "parse_special": True}
        payload = await self._call("POST", "/tokenize", body)
        try:
            return tokenize_decoder.decode(payload).tokens
        except msgspec.DecodeError as exc:
            raise WorkerReset(f"POST /tokenize: unexpected answer: {exc}", engine=ENGINE) from exc

    async def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        try:
            payload = await self._call("POST", "/apply-template", {"messages": messages})
        except WorkerReset as exc:
            if "HTTP 404" in exc.message:  # a build without /apply-template
                raise InvalidParams(
                    "this llama-server build has no /apply-template", engine=ENGINE
                ) from exc
            raise
        try:
            return apply_template_decoder.decode(payload).prompt
        except msgspec.DecodeError as exc:
            raise WorkerReset(
                f"POST /apply-template: unexpected answer: {exc}", engine=ENGINE
            ) from exc

    async def metrics(self) -> EngineMetrics:
        """ORCH-3009: needs ``--metrics`` (else 501 -> InvalidParams)."""
        payload = await self._call("GET", "/metrics")
        m = to_engine_metrics(parse_prometheus(payload.decode("utf-8", "replace")))
        if m.kv_cache_usage_ratio is None:
            # Current builds dropped llamacpp:kv_cache_usage_ratio: derive it from the
            # engine's own /slots report (ORCH-7003).
            try:
                slots = await self._call("GET", "/slots")
            except OrchError:
                return m
            ratio = kv_usage_from_slots(slots)
            if ratio is not None:
                m = msgspec.structs.replace(m, kv_cache_usage_ratio=ratio)
        return m

    # -- streaming --------------------------------------------------------
    async def cancel(self, task_id: str) -> None:
        inflight = self._inflight.get(task_id)
        if inflight is None:
            return
        inflight.cancelled = True
        # Wake the reader first: closing alone detaches the payload and would
        # leave a pending read waiting forever.
        inflight.resp.content.set_exception(_CancelledByCaller(task_id))
        inflight.resp.close()

    async def generate(self, req: GenerateRequest) -> AsyncIterator[AdapterEvent]:
        """ORCH-3005..3007. Errors surface from ``__anext__`` as core errors."""
        if req.task_id in self._inflight:
            raise InvalidParams(f"task {req.task_id!r} is already streaming", engine=ENGINE)
        resp = await self._open_stream(req)
        loop = asyncio.get_running_loop()
        inflight = _InFlight(resp, self.options.idle_timeout_s)
        inflight.arm(loop)
        self._inflight[req.task_id] = inflight
        try:
            stream = CompletionStream()
            while True:
                data = await self._read(inflight)
                inflight.last_data = loop.time()
                if data is None:  # cancel(task_id)
                    yield Finished(
                        reason=CANCELLED,
                        tokens_generated=stream.tokens_generated,
                        prompt_tokens=stream.prompt_tokens,
                    )
                    return
                if not data:
                    raise WorkerReset(
                        "engine closed the stream before the final chunk", engine=ENGINE
                    )
                for event in stream.feed(data):
                    if isinstance(event, Finished):
                        self._done(req.task_id, inflight)
                        yield event
                        return
                    yield event
                if stream.failure is not None:
                    raise stream.failure
        finally:
            self._done(req.task_id, inflight)

    async def _open_stream(self, req: GenerateRequest) -> aiohttp.ClientResponse:
        what = "POST /completion"
        body = encoder.encode(
            CompletionRequest(
                prompt=req.prompt,
                n_predict=req.max_tokens,
                seed=req.seed,
                temperature=req.temperature,
                top_k=req.top_k,
                top_p=req.top_p,
                min_p=req.min_p,
                repeat_penalty=req.repeat_penalty,
                stop=list(req.stop),
                cache_prompt=req.cache_prompt,
            )
        )
        idle = self.options.idle_timeout_s
        try:
            # llama-server sends the headers after the first result (so an
            # early error is a plain HTTP error); idle_timeout_s bounds it too.
            async with asyncio.timeout(idle):
                resp = await self._http().post(self._base + "/completion", data=body, headers=_JSON)
        except aiohttp.ClientError as exc:
            raise WorkerReset(f"{what}: {type(exc).__name__}: {exc}", engine=ENGINE) from exc
        except TimeoutError as exc:
            raise DecodeTimeout(f"{what}: no answer in {idle}s", engine=ENGINE) from exc
        if resp.status == 200:
            return resp
        try:
            async with asyncio.timeout(self.options.request_timeout_s):
                payload = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            resp.close()
            raise WorkerReset(
                f"{what}: HTTP {resp.status}, body unreadable", engine=ENGINE
            ) from exc
        resp.release()
        raise error_from_response(resp.status, payload, what)

    async def _read(self, inflight: _InFlight) -> bytes | None:
        """The next bytes of the stream; ``b""`` at EOF; ``None`` if cancelled."""
        try:
            return await inflight.resp.content.readany()
        except _CancelledByCaller:
            return None
        except _IdleTimeout as exc:
            raise DecodeTimeout(
                f"no bytes from engine for {inflight.idle_s}s during generation", engine=ENGINE
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            if inflight.cancelled:
                return None
            raise WorkerReset(
                f"stream from engine broken: {type(exc).__name__}: {exc}", engine=ENGINE
            ) from exc

    def _done(self, task_id: str, inflight: _InFlight) -> None:
        inflight.disarm()
        if self._inflight.get(task_id) is inflight:
            del self._inflight[task_id]
        if not inflight.resp.closed:
            inflight.resp.close()  # drop the socket: llama-server sees the disconnect
