"""The Triton adapter: KServe v2 health/metadata/statistics and the generate
extension's ``generate_stream`` over HTTP (aiohttp).

One :class:`aiohttp.ClientSession` per adapter, created lazily inside the
running loop and closed by :meth:`TritonAdapter.aclose`.

Cancellation (ORCH-3006, ORCH-4072): closing the ``generate`` iterator, or
``cancel(task_id)``, drops the HTTP connection (``resp.close()``). Triton
then cancels the request in the core, but a **Python-backend model is not
told** (it runs to its end, Triton counts a success): for such models the
cancel is effective only on the client side. See README.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

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

from ._errors import ENGINE, error_from_response
from ._metrics import to_engine_metrics
from ._options import TritonOptions, parse_options
from ._stream import GenerateStream
from ._wire import encoder, model_metadata_decoder, server_metadata_decoder

__all__ = ["CANCELLED", "TritonAdapter"]

CANCELLED = "canceled"
_JSON = {"Content-Type": "application/json"}
_TOKEN_HEADER = "triton-access-token"


class _CancelledByCaller(Exception):
    """Wakes a stream reader blocked on a response that cancel() closed."""


@dataclass(eq=False)
class _InFlight:
    resp: aiohttp.ClientResponse
    cancelled: bool = False


class TritonAdapter(WorkerAdapter):
    engine: ClassVar[str] = ENGINE

    def __init__(self, target: AdapterTarget) -> None:
        super().__init__(target)
        self.options: TritonOptions = parse_options(dict(target.options))
        self._base = target.base_url.rstrip("/")
        model = self.options.model
        version = self.options.model_version
        self._model_path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        self._metrics_url = self.options.metrics_url or _default_metrics_url(self._base)
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, _InFlight] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.connect_timeout_s)
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

    # -- plain request/response calls ------------------------------------
    async def _call(self, url: str, what: str, headers: dict[str, str] | None = None) -> bytes:
        try:
            async with asyncio.timeout(self.options.request_timeout_s):
                async with self._http().get(url, headers=headers) as resp:
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

    async def _status(self, path: str) -> tuple[int, bytes]:
        async with asyncio.timeout(self.options.health_timeout_s):
            async with self._http().get(self._base + path) as resp:
                return resp.status, await resp.read()

    async def health(self) -> Health:
        """ORCH-4071: server ready and model ready (200) → ready; 400 → live, not ready."""
        try:
            live, _ = await self._status("/v2/health/live")
            server, _ = await self._status("/v2/health/ready")
            model, body = await self._status(self._model_path + "/ready")
        except Exception as exc:  # never raises: any failure means "not live"
            return Health(live=False, ready=False, detail=f"{type(exc).__name__}: {exc}")
        if live != 200:
            return Health(live=False, ready=False, detail=f"GET /v2/health/live: HTTP {live}")
        if server != 200:
            return Health(live=True, ready=False, detail=f"GET /v2/health/ready: HTTP {server}")
        if model != 200:
            why = body[:200].decode("utf-8", "replace") or f"HTTP {model}"
            return Health(live=True, ready=False, detail=f"model {self.options.model}: {why}")
        return Health(live=True, ready=True)

    async def props(self) -> EngineProps:
        """ORCH-4071: version from ``GET /v2``, model checked via its metadata."""
        try:
            server = server_metadata_decoder.decode(await self._call(self._base + "/v2", "GET /v2"))
            meta = model_metadata_decoder.decode(
                await self._call(self._base + self._model_path, f"GET {self._model_path}")
            )
        except msgspec.DecodeError as exc:
            raise WorkerReset(f"Triton metadata: unexpected answer: {exc}", engine=ENGINE) from exc
        inputs = {t.name for t in meta.inputs}
        outputs = {t.name for t in meta.outputs}
        if "text_input" not in inputs or "text_output" not in outputs:
            raise InvalidParams(
                f"Triton model {meta.name!r} is not a text model: inputs {sorted(inputs)}, "
                f"outputs {sorted(outputs)} (need text_input -> text_output)",
                engine=ENGINE,
            )
        t = self.target
        return EngineProps(
            engine=ENGINE,
            engine_version=t.engine_version or f"{server.name}-{server.version}",
            model_ref=t.model_ref or meta.name,
            model_digest=t.model_digest,
            slots=self.options.slots,
            ctx=self.options.ctx,
            capabilities=frozenset({Capability.METRICS, Capability.SEEDED_SAMPLING}),
        )

    async def tokenize(self, text: str) -> list[int]:
        """Triton has no generic tokenize endpoint (no TOKENIZE capability)."""
        raise InvalidParams("Triton exposes no tokenizer endpoint", engine=ENGINE)

    async def statistics(self) -> dict[str, float]:
        """``GET /v2/models/{m}/stats`` (restricted: needs ``access_token``)."""
        headers = {_TOKEN_HEADER: self.options.access_token} if self.options.access_token else None
        payload = await self._call(
            self._base + self._model_path + "/stats", "GET .../stats", headers
        )
        try:
            stats = msgspec.json.decode(payload)
            model = stats["model_stats"][0]
            inference = model["inference_stats"]
            return {
                "inference_count": float(model["inference_count"]),
                "execution_count": float(model["execution_count"]),
                "success_count": float(inference["success"]["count"]),
                "fail_count": float(inference["fail"]["count"]),
            }
        except (msgspec.DecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise WorkerReset(f"GET .../stats: unexpected answer: {exc}", engine=ENGINE) from exc

    async def metrics(self) -> EngineMetrics:
        """ORCH-4073: the metrics port, plus model statistics when a token is set."""
        payload = await self._call(self._metrics_url, f"GET {self._metrics_url}")
        samples = parse_prometheus(payload.decode("utf-8", "replace"))
        if self.options.access_token:
            for key, value in (await self.statistics()).items():
                samples[f"stats:{key}"] = value
        return to_engine_metrics(samples, self.options.model)

    # -- streaming --------------------------------------------------------
    async def cancel(self, task_id: str) -> None:
        inflight = self._inflight.get(task_id)
        if inflight is None:
            return
        inflight.cancelled = True
        inflight.resp.content.set_exception(_CancelledByCaller(task_id))
        inflight.resp.close()

    async def generate(self, req: GenerateRequest) -> AsyncIterator[AdapterEvent]:
        """ORCH-4070. Errors surface from ``__anext__`` as core errors."""
        if req.task_id in self._inflight:
            raise InvalidParams(f"task {req.task_id!r} is already streaming", engine=ENGINE)
        resp = await self._open_stream(req)
        inflight = _InFlight(resp)
        self._inflight[req.task_id] = inflight
        try:
            stream = GenerateStream(req.max_tokens)
            while True:
                data = await self._read(inflight)
                if data is None:
                    yield Finished(
                        reason=CANCELLED,
                        tokens_generated=stream.tokens_generated,
                        prompt_tokens=stream.prompt_tokens,
                    )
                    return
                if not data:  # no end marker: the body ending is the finish
                    self._done(req.task_id, inflight)
                    yield stream.end_of_body()
                    return
                for event in stream.feed(data):
                    yield event
                if stream.failure is not None:
                    raise stream.failure
        finally:
            self._done(req.task_id, inflight, force_close=True)

    def _body(self, req: GenerateRequest) -> bytes:
        params: dict[str, object] = {
            "max_tokens": req.max_tokens,
            "seed": req.seed,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "min_p": req.min_p,
            "repeat_penalty": req.repeat_penalty,
            "cache_prompt": req.cache_prompt,
        }
        if req.top_k > 0:
            params["top_k"] = req.top_k
        if req.stop:
            # Triton request parameters are scalars only: a JSON array in a string.
            params["stop"] = encoder.encode(list(req.stop)).decode()
        return encoder.encode({"id": req.task_id, "text_input": req.prompt, "parameters": params})

    async def _open_stream(self, req: GenerateRequest) -> aiohttp.ClientResponse:
        what = f"POST {self._model_path}/generate_stream"
        idle = self.options.idle_timeout_s
        try:
            async with asyncio.timeout(idle):
                resp = await self._http().post(
                    self._base + self._model_path + "/generate_stream",
                    data=self._body(req),
                    headers=_JSON,
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
        idle = self.options.idle_timeout_s
        try:
            async with asyncio.timeout(idle):
                return await inflight.resp.content.readany()
        except _CancelledByCaller:
            return None
        except TimeoutError as exc:
            raise DecodeTimeout(
                f"no bytes from Triton for {idle}s during generation", engine=ENGINE
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            if inflight.cancelled:
                return None
            raise WorkerReset(
                f"stream from Triton broken: {type(exc).__name__}: {exc}", engine=ENGINE
            ) from exc

    def _done(self, task_id: str, inflight: _InFlight, *, force_close: bool = False) -> None:
        if self._inflight.get(task_id) is inflight:
            del self._inflight[task_id]
        resp = inflight.resp
        if resp.closed:
            return
        if not force_close and resp.content.at_eof():
            resp.release()
        else:
            resp.close()


def _default_metrics_url(base: str) -> str:
    parts = urlsplit(base)
    return f"{parts.scheme or 'http'}://{parts.hostname or '127.0.0.1'}:8002/metrics"
