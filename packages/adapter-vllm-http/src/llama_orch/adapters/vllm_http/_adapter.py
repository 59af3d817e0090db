"""The vLLM adapter: OpenAI-compatible completions over HTTP (aiohttp).

One :class:`aiohttp.ClientSession` per adapter, created lazily inside the
running loop and closed by :meth:`VllmHttpAdapter.aclose`.

Cancellation (ORCH-3006, ORCH-4061): vLLM aborts a request inside
``AsyncLLM.generate`` when its client disconnects (llama-server does the
same). Closing the ``generate`` iterator, or cancelling the task consuming
it, therefore closes the HTTP response with ``resp.close()``: the socket is
dropped, never returned half-read to the pool. ``cancel(task_id)`` does the
same for a stream owned by another task.
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

from ._errors import ENGINE, error_from_response
from ._metrics import to_engine_metrics
from ._options import VllmOptions, parse_options
from ._stream import CompletionsStream
from ._wire import (
    CompletionsRequest,
    ModelCard,
    StreamOptions,
    encoder,
    models_decoder,
    tokenize_decoder,
    version_decoder,
)

__all__ = ["CANCELLED", "VllmHttpAdapter"]

CANCELLED = "canceled"  # Finished.reason after cancel(task_id) (adapter_api, ORCH-3006)
_JSON = {"Content-Type": "application/json"}


class _CancelledByCaller(Exception):
    """Wakes a stream reader blocked on a response that cancel() closed."""


@dataclass(eq=False)
class _InFlight:
    resp: aiohttp.ClientResponse
    cancelled: bool = False


def _meta_int(card: ModelCard, key: str) -> int:
    """llama-server's ``/v1/models`` ``meta`` (``n_ctx`` is the per-slot context)."""
    value = (card.meta or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class VllmHttpAdapter(WorkerAdapter):
    engine: ClassVar[str] = ENGINE

    def __init__(self, target: AdapterTarget) -> None:
        super().__init__(target)
        self.options: VllmOptions = parse_options(dict(target.options))
        self._base = target.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, _InFlight] = {}
        self._model: ModelCard | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.connect_timeout_s)
            # No connection cap: the pool's slot accounting bounds concurrency.
            # No keep-alive: llama-server closes idle connections, and a POST
            # on such a stale pooled socket fails ("Can not write request
            # body"); a loopback connect per request costs far less than that.
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
    async def _call(self, method: str, path: str, body: object | None = None) -> tuple[int, bytes]:
        what = f"{method} {path}"
        data = encoder.encode(body) if body is not None else None
        try:
            async with asyncio.timeout(self.options.request_timeout_s):
                async with self._http().request(
                    method, self._base + path, data=data, headers=_JSON if data else None
                ) as resp:
                    return resp.status, await resp.read()
        except aiohttp.ClientError as exc:
            raise WorkerReset(f"{what}: {type(exc).__name__}: {exc}", engine=ENGINE) from exc
        except TimeoutError as exc:
            raise WorkerReset(
                f"{what}: no answer in {self.options.request_timeout_s}s", engine=ENGINE
            ) from exc

    async def _ok(self, method: str, path: str, body: object | None = None) -> bytes:
        status, payload = await self._call(method, path, body)
        if status != 200:
            raise error_from_response(status, payload, f"{method} {path}")
        return payload

    async def health(self) -> Health:
        """ORCH-4062: 200 = ready; 503 = live, not ready; unreachable = not live.

        vLLM opens its port only once the model is loaded, so "loading" is
        "connection refused" here; the pool manager's start-up grace period
        turns that into not-ready-yet instead of a failure.
        """
        try:
            async with asyncio.timeout(self.options.health_timeout_s):
                async with self._http().get(self._base + "/health") as resp:
                    await resp.read()
                    status = resp.status
        except Exception as exc:  # never raises: any failure means "not live"
            return Health(live=False, ready=False, detail=f"{type(exc).__name__}: {exc}")
        if status == 200:
            return Health(live=True, ready=True)
        return Health(live=True, ready=False, detail=f"GET /health: HTTP {status}")

    async def _served_model(self) -> ModelCard:
        if self._model is None:
            payload = await self._ok("GET", "/v1/models")
            try:
                cards = models_decoder.decode(payload).data
            except msgspec.DecodeError as exc:
                raise WorkerReset(
                    f"GET /v1/models: unexpected answer: {exc}", engine=ENGINE
                ) from exc
            want = self.options.served_model
            match = [c for c in cards if c.id == want] if want else cards[:1]
            if not match:
                served = [c.id for c in cards]
                raise WorkerReset(
                    f"engine does not serve {want!r} (serves {served})", engine=ENGINE
                )
            self._model = match[0]
        return self._model

    async def _engine_version(self) -> str:
        status, payload = await self._call("GET", "/version")
        if status == 200:
            try:
                return f"vllm-{version_decoder.decode(payload).version}"
            except msgspec.DecodeError:
                pass
        return "openai-compatible (no /version)"

    async def props(self) -> EngineProps:
        """ORCH-4063: ctx from ``max_model_len``; slots from the launcher (option)."""
        card = await self._served_model()
        ctx = self.options.ctx or card.max_model_len or _meta_int(card, "n_ctx")
        if ctx <= 0:
            raise WorkerReset(
                "GET /v1/models states no context size; set the adapter option 'ctx'",
                engine=ENGINE,
            )
        t = self.target
        return EngineProps(
            engine=ENGINE,
            engine_version=t.engine_version or await self._engine_version(),
            model_ref=t.model_ref or card.root or card.id,
            # vLLM exposes no digest of the weights: only the launcher knows
            # what it converted the model from (see README).
            model_digest=t.model_digest,
            slots=self.options.slots,
            ctx=ctx,
            capabilities=frozenset(
                {Capability.TOKENIZE, Capability.METRICS, Capability.SEEDED_SAMPLING}
            ),
        )

    async def tokenize(self, text: str) -> list[int]:
        """ORCH-4064: counted as a completions prompt is (special tokens added).

        The body names the text for both dialects: ``prompt`` (vLLM) and
        ``content`` (llama-server); each ignores the other's fields.
        """
        card = await self._served_model()
        body = {
            "model": card.id,
            "prompt": text,
            "add_special_tokens": True,
            "content": text,
            "add_special": True,
        }
        payload = await self._ok("POST", "/tokenize", body)
        try:
            return tokenize_decoder.decode(payload).tokens
        except msgspec.DecodeError as exc:
            raise WorkerReset(f"POST /tokenize: unexpected answer: {exc}", engine=ENGINE) from exc

    async def metrics(self) -> EngineMetrics:
        """ORCH-4065: ``vllm:`` names (summed over labels) normalised."""
        payload = await self._ok("GET", "/metrics")
        return to_engine_metrics(parse_prometheus(payload.decode("utf-8", "replace")))

    # -- streaming --------------------------------------------------------
    async def cancel(self, task_id: str) -> None:
        inflight = self._inflight.get(task_id)
        if inflight is None:
            return
        inflight.cancelled = True
        inflight.resp.content.set_exception(_CancelledByCaller(task_id))
        inflight.resp.close()

    async def generate(self, req: GenerateRequest) -> AsyncIterator[AdapterEvent]:
        """ORCH-4060. Errors surface from ``__anext__`` as core errors."""
        if req.task_id in self._inflight:
            raise InvalidParams(f"task {req.task_id!r} is already streaming", engine=ENGINE)
        resp = await self._open_stream(req)
        inflight = _InFlight(resp)
        self._inflight[req.task_id] = inflight
        try:
            stream = CompletionsStream(asked_stop=bool(req.stop))
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
                    finished = stream.end_of_body()  # raises WorkerReset if cut short
                    self._done(req.task_id, inflight)
                    yield finished
                    return
                for event in stream.feed(data):
                    if isinstance(event, Finished):
                        self._done(req.task_id, inflight)
                        yield event
                        return
                    yield event
                if stream.failure is not None:
                    raise stream.failure
        finally:
            self._done(req.task_id, inflight, force_close=True)

    async def _open_stream(self, req: GenerateRequest) -> aiohttp.ClientResponse:
        what = "POST /v1/completions"
        card = await self._served_model()
        body = encoder.encode(
            CompletionsRequest(
                model=card.id,
                prompt=req.prompt,
                max_tokens=req.max_tokens,
                seed=req.seed,
                temperature=req.temperature,
                top_p=req.top_p,
                min_p=req.min_p,
                stream=True,
                stream_options=StreamOptions(include_usage=True),
                return_token_ids=True,
                top_k=req.top_k if req.top_k > 0 else None,
                stop=list(req.stop) or None,
                repetition_penalty=req.repeat_penalty if req.repeat_penalty != 1.0 else None,
                repeat_penalty=req.repeat_penalty if req.repeat_penalty != 1.0 else None,
                cache_prompt=None if req.cache_prompt else False,
            )
        )
        idle = self.options.idle_timeout_s
        try:
            async with asyncio.timeout(idle):
                resp = await self._http().post(
                    self._base + "/v1/completions", data=body, headers=_JSON
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

    def _done(self, task_id: str, inflight: _InFlight, *, force_close: bool = False) -> None:
        if self._inflight.get(task_id) is inflight:
            del self._inflight[task_id]
        resp = inflight.resp
        if resp.closed:
            return
        if not force_close and resp.content.at_eof():
            resp.release()
        else:
            resp.close()  # drop the socket: the engine sees the disconnect and aborts
