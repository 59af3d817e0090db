"""The TGI adapter (native API, aiohttp).

Cancellation (ORCH-3006): TGI has no cancel endpoint; its batcher drops a
request whose client went away at the next decode step. So closing the
``generate`` iterator, cancelling its consumer, or ``cancel(task_id)``
closes the HTTP response (``resp.close()``), never returning the socket to
a pool.
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
from llama_orch.core.errors import DecodeTimeout, InvalidParams, WorkerReset
from llama_orch.core.prometheus import parse_prometheus

from ._errors import ENGINE, error_from_response, parse_error_body
from ._options import TgiOptions, parse_options
from ._stream import GenerateStream
from ._wire import GenerateBody, GenerateParameters, encoder, info_decoder, tokenize_decoder

__all__ = ["CANCELLED", "METRICS", "TgiHttpAdapter", "generate_parameters"]

CANCELLED = "canceled"
_JSON = {"Content-Type": "application/json"}
_U64 = (1 << 64) - 1

# TGI metric -> EngineMetrics field. TGI exports no KV-cache gauge.
METRICS: dict[str, str] = {
    "tgi_batch_current_size": "requests_running",
    "tgi_queue_size": "requests_waiting",
    "tgi_request_input_length_sum": "prompt_tokens_total",
    "tgi_request_generated_tokens_sum": "generated_tokens_total",
}


def generate_parameters(req: GenerateRequest) -> GenerateParameters:
    """ORCH-4017: temperature 0 is greedy: ``do_sample: false`` and no warper at
    all (TGI rejects ``temperature: 0`` and samples as soon as any warper is
    set). ``min_p`` has no TGI equivalent and is not sent."""
    stop = list(req.stop)
    if req.temperature <= 0.0:
        return GenerateParameters(
            max_new_tokens=req.max_tokens,
            details=True,
            do_sample=False,
            repetition_penalty=req.repeat_penalty if req.repeat_penalty != 1.0 else None,
            stop=stop,
        )
    return GenerateParameters(
        max_new_tokens=req.max_tokens,
        details=True,
        do_sample=True,
        seed=req.seed & _U64,  # TGI's seed is a u64
        temperature=req.temperature,
        top_k=req.top_k if req.top_k > 0 else None,
        top_p=req.top_p if 0.0 < req.top_p < 1.0 else None,
        repetition_penalty=req.repeat_penalty if req.repeat_penalty != 1.0 else None,
        stop=stop,
    )


class _CancelledByCaller(Exception):
    """Wakes a stream reader blocked on a response that cancel() closed."""


@dataclass(eq=False)
class _InFlight:
    resp: aiohttp.ClientResponse
    cancelled: bool = False


class TgiHttpAdapter(WorkerAdapter):
    engine: ClassVar[str] = ENGINE

    def __init__(self, target: AdapterTarget) -> None:
        super().__init__(target)
        self.options: TgiOptions = parse_options(dict(target.options))
        self._base = target.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, _InFlight] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.connect_timeout_s)
            # No cap (slot accounting bounds concurrency); no pooling of a
            # connection the engine may be closing.
            connector = aiohttp.TCPConnector(limit=0, force_close=True)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session

    async def aclose(self) -> None:
        for inflight in list(self._inflight.values()):
            inflight.resp.content.set_exception(aiohttp.ClientConnectionError("adapter closed"))
            inflight.resp.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        """ORCH-3003: 200 = ready; 503 (unhealthy) = live, not ready; a refused
        connection (TGI while loading) = not live."""
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
        detail = err.error if err and err.error else f"HTTP {status}"
        return Health(live=True, ready=False, detail=detail)

    async def props(self) -> EngineProps:
        """ORCH-3004: slots = max_concurrent_requests, ctx = max_total_tokens;
        version and digest from the target, else TGI's version/sha and model_sha."""
        payload = await self._call("GET", "/info")
        try:
            info = info_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise WorkerReset(f"GET /info: unexpected answer: {exc}", engine=ENGINE) from exc
        t = self.target
        version = f"tgi {info.version}" + (f" ({info.sha})" if info.sha else "")
        return EngineProps(
            engine=ENGINE,
            engine_version=t.engine_version or version,
            model_ref=t.model_ref or info.model_id,
            model_digest=t.model_digest or (info.model_sha or ""),
            slots=info.max_concurrent_requests,
            ctx=info.max_total_tokens,
            capabilities=frozenset(
                {Capability.TOKENIZE, Capability.METRICS, Capability.SEEDED_SAMPLING}
            ),
        )

    async def tokenize(self, text: str) -> list[int]:
        """ORCH-3008: TGI's own tokenizer (404 without a fast tokenizer -> InvalidParams)."""
        payload = await self._call("POST", "/tokenize", {"inputs": text})
        try:
            return [t.id for t in tokenize_decoder.decode(payload)]
        except msgspec.DecodeError as exc:
            raise WorkerReset(f"POST /tokenize: unexpected answer: {exc}", engine=ENGINE) from exc

    async def metrics(self) -> EngineMetrics:
        payload = await self._call("GET", "/metrics")
        samples = parse_prometheus(payload.decode("utf-8", "replace"))
        fields = {field: samples[name] for name, field in METRICS.items() if name in samples}
        return EngineMetrics(**fields, raw=samples)

    async def cancel(self, task_id: str) -> None:
        inflight = self._inflight.get(task_id)
        if inflight is None:
            return
        inflight.cancelled = True
        inflight.resp.content.set_exception(_CancelledByCaller(task_id))
        inflight.resp.close()

    async def generate(self, req: GenerateRequest) -> AsyncIterator[AdapterEvent]:
        """ORCH-3005..3007. Errors surface from ``__anext__`` as core errors."""
        if req.task_id in self._inflight:
            raise InvalidParams(f"task {req.task_id!r} is already streaming", engine=ENGINE)
        resp = await self._open_stream(req)
        inflight = _InFlight(resp)
        self._inflight[req.task_id] = inflight
        try:
            stream = GenerateStream()
            while True:
                data = await self._read(inflight)
                if data is None:  # cancel(task_id)
                    yield Finished(
                        reason=CANCELLED,
                        tokens_generated=stream.tokens_generated,
                        prompt_tokens=stream.prompt_tokens,
                    )
                    return
                if not data:
                    raise WorkerReset(
                        "engine closed the stream before the final event", engine=ENGINE
                    )
                for event in stream.feed(data):
                    yield event
                    if isinstance(event, Finished):
                        return
                if stream.failure is not None:
                    raise stream.failure
        finally:
            if self._inflight.get(req.task_id) is inflight:
                del self._inflight[req.task_id]
            if not resp.closed:
                resp.close()  # drop the socket: TGI drops the request

    async def _open_stream(self, req: GenerateRequest) -> aiohttp.ClientResponse:
        what = "POST /generate_stream"
        body = encoder.encode(GenerateBody(inputs=req.prompt, parameters=generate_parameters(req)))
        idle = self.options.idle_timeout_s
        try:
            async with asyncio.timeout(idle):
                resp = await self._http().post(
                    self._base + "/generate_stream", data=body, headers=_JSON
                )
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
        idle = self.options.idle_timeout_s
        try:
            async with asyncio.timeout(idle):
                return await inflight.resp.content.readany()
        except _CancelledByCaller:
            return None
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            raise DecodeTimeout(
                f"no bytes from engine for {idle}s during generation", engine=ENGINE
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            if inflight.cancelled:
                return None
            raise WorkerReset(
                f"stream from engine broken: {type(exc).__name__}: {exc}", engine=ENGINE
            ) from exc
