"""The transport every HTTP worker adapter shares (ORCH-4100..ORCH-4105).

A concrete adapter subclasses :class:`HttpAdapter` and keeps only its wire
mapping: the request that opens a stream (:meth:`~HttpAdapter.stream_request`),
the decoder of that stream (:meth:`~HttpAdapter.new_decoder`), its options
struct and error table (``options_type``, ``error_table``), and ``props``,
``tokenize`` and ``metrics`` written with :meth:`~HttpAdapter.call`.

Connection policy: per adapter (so per replica) one :class:`aiohttp.ClientSession`
for calls and one :class:`~._lean.StreamPool` of lean connections for streams
(ORCH-2745: aiohttp kept ~9 KB per open response), each created lazily inside the
running loop, closed by :meth:`~HttpAdapter.aclose` (ORCH-2720). A connection
goes back to its pool only when the engine's answer was read to its end; pooled
connections idle for ``keepalive_s`` are dropped. A request on a pooled
connection that the engine had already closed fails before any byte of an
answer; that one, and only that one, is sent again (ORCH-2721): the engine
never saw it.

Cancellation (ORCH-3006): the engines here stop a request when its client
disconnects. Closing the ``generate`` iterator, cancelling the task
consuming it, or ``cancel(task_id)`` closes the stream's connection: the
socket is dropped, never returned half-read.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import weakref
from collections.abc import AsyncGenerator
from typing import ClassVar, Protocol, TypeVar

import aiohttp
import msgspec
from aiohttp.tracing import Trace
from llama_orch.core.adapter_api import (
    CANCELED,
    ENGINE_TRACE_HEADERS,
    AdapterEvent,
    AdapterTarget,
    Finished,
    GenerateRequest,
    Health,
    WorkerAdapter,
)
from llama_orch.core.errors import DecodeTimeout, InvalidParams, OrchError, WorkerReset

from ._deadline import Deadline
from ._errors import map_transport_errors
from ._lean import StaleConnection, StreamConn, StreamPool
from ._streams import CancelledByCaller, IdleTimeout, InFlight
from .options import HttpTimeouts, parse_options

__all__ = ["HttpAdapter", "StreamDecoder"]

T = TypeVar("T")
_JSON = {"Content-Type": "application/json"}
_CLOSE = b"Connection: close\r\n"
_encoder = msgspec.json.Encoder()
_MAX_STALE = 2  # stale pooled connections skipped before the last try of a request
_DRAIN_S = 0.05  # bound on reading the end of a finished stream to pool its connection
_DRAIN_BYTES = 65_536


class _Attempt:
    """One try of a request; ``reused`` when it went out on a pooled connection."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


# the try of the request being sent in this task (``_send``), for the connector
_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "llama_orch_http_attempt", default=None
)


class _Connector(aiohttp.TCPConnector):
    """Marks the current try as ``reused`` when the connection it gets carried an
    earlier request (a pooled one, ORCH-2721): each connection has its own protocol
    object, which the pool hands out again. No aiohttp trace (ORCH-2769)."""

    def __init__(self, *, keepalive_s: float) -> None:
        # No connection cap (limit=0): see ``HttpAdapter._http``; 0 s: no pooling
        if keepalive_s > 0:
            super().__init__(limit=0, keepalive_timeout=keepalive_s)
        else:
            super().__init__(limit=0, force_close=True)
        self._handed_out: weakref.WeakSet[object] = weakref.WeakSet()

    async def connect(
        self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> aiohttp.connector.Connection:
        conn = await super().connect(req, traces, timeout)
        protocol = conn.protocol
        if protocol is not None:
            if protocol in self._handed_out:
                attempt = _ATTEMPT.get()
                if attempt is not None:
                    attempt.reused = True
            else:
                self._handed_out.add(protocol)
        return conn


class StreamDecoder(Protocol):
    """What :meth:`HttpAdapter.generate` needs of a stream decoder (see ``SSEStream``)."""

    prompt_tokens: int
    failure: OrchError | None

    @property
    def tokens_generated(self) -> int: ...

    def feed(self, data: bytes) -> list[AdapterEvent]: ...

    def end_of_body(self) -> Finished: ...


class HttpAdapter(WorkerAdapter):
    """Subclasses set ``engine``, ``options_type`` (an :class:`HttpTimeouts`
    subclass, parsed from ``target.options``) and ``error_table`` (the
    engine's ``(status, body, what) -> OrchError``, as a ``staticmethod``)."""

    health_path = "/health"
    # False: the engine closes a connection after each streamed answer, so streams
    # send `Connection: close` and are never pooled (ORCH-2720); other calls are.
    pool_streams: ClassVar[bool] = True
    options_type: ClassVar[type[HttpTimeouts]] = HttpTimeouts
    error_table: ClassVar[staticmethod[[int, bytes, str], OrchError]]

    def __init__(self, target: AdapterTarget) -> None:
        super().__init__(target)
        self.options = parse_options(dict(target.options), self.options_type, self.engine)
        self.base_url = target.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None  # calls (fetch, probe)
        self._pool: StreamPool | None = None  # streams (generate, ORCH-2745)
        self._inflight: dict[str, InFlight] = {}
        self._closed = False  # ORCH-4106: nothing opens after aclose()
        self.pooled_requests = 0  # answered on a connection taken from the pool
        self.stale_retries = 0  # requests sent again after a stale pooled connection

    # -- what an adapter writes -------------------------------------------
    @abc.abstractmethod
    async def stream_request(self, req: GenerateRequest) -> tuple[str, object]:
        """The path to POST and the JSON body that open ``req``'s stream."""

    @abc.abstractmethod
    def new_decoder(self, req: GenerateRequest) -> StreamDecoder:
        """A fresh decoder for one stream."""

    def error_from_response(self, status: int, body: bytes, what: str) -> OrchError:
        """The core error for a non-200 answer to ``what`` (e.g. ``"POST /completion"``)."""
        return self.error_table(status, body, what)

    def not_ready_detail(self, status: int, body: bytes) -> str:
        """Health detail for a non-200 answer to ``health_path``."""
        return f"GET {self.health_path}: HTTP {status}"

    # -- connection policy --------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise WorkerReset("adapter closed", engine=self.engine)  # ORCH-4106
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.options.connect_timeout_s)
            # No connection cap: the pool's slot accounting bounds concurrency.
            # aiohttp's default (100) silently queued every stream beyond 100
            # inside the adapter, with the slot already counted as busy.
            keepalive = self.options.keepalive_s
            # Engines close idle keep-alive connections on their own clock; a
            # request written to one that is closing fails with "Cannot write to
            # closing transport" or a disconnect before any answer (found by the
            # conformance suite's back-to-back generations when pooling was first
            # tried). The connector marks which requests went out on a pooled
            # connection, so exactly those failures are retried (_send).
            connector = _Connector(keepalive_s=keepalive)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session

    async def _send(
        self, method: str, url: str, data: bytes | None, headers: dict[str, str] | None
    ) -> aiohttp.ClientResponse:
        """One request, its answer's head read; sent again only when it failed on a
        pooled connection before any byte of an answer arrived (ORCH-2721)."""
        for _ in range(_MAX_STALE):
            attempt = _Attempt()
            token = _ATTEMPT.set(attempt)
            try:
                resp = await self._http().request(method, url, data=data, headers=headers)
                self.pooled_requests += attempt.reused
                return resp
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # a failure on a new connection (connect errors included) is the
                # engine's answer; on a pooled one the engine never saw the request
                if not attempt.reused:
                    raise
                self.stale_retries += 1
            finally:
                _ATTEMPT.reset(token)
        # every try so far met a pooled connection the engine had closed: the last one
        return await self._http().request(method, url, data=data, headers=headers)

    async def aclose(self) -> None:
        """Close every open stream (their readers get WorkerReset) and the session;
        the adapter opens nothing afterwards (ORCH-4106)."""
        self._closed = True
        for inflight in list(self._inflight.values()):
            inflight.cancel(ConnectionResetError("adapter closed"))
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        return path if "://" in path else self.base_url + path

    # -- plain request/response calls ----------------------------------------
    async def fetch(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Status and body of one call bounded by ``request_timeout_s``; transport
        failures are WorkerReset."""
        data = _encoder.encode(body) if body is not None else None
        if data is not None:
            headers = {**(headers or {}), **_JSON}
        trace = ENGINE_TRACE_HEADERS.get()
        if trace:  # ORCH-7044: a traced run's call continues its trace
            headers = {**(headers or {}), **trace}
        timeout = self.options.request_timeout_s
        with map_transport_errors(f"{method} {path}", self.engine, timeout):
            async with asyncio.timeout(timeout):
                async with await self._send(method, self.url(path), data, headers) as resp:
                    return resp.status, await resp.read()

    async def call(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """The body of a 200 answer; any other status is :meth:`error_from_response`."""
        status, payload = await self.fetch(method, path, body, headers=headers)
        if status != 200:
            raise self.error_from_response(status, payload, f"{method} {path}")
        return payload

    def decode(self, decoder: msgspec.json.Decoder[T], payload: bytes, what: str) -> T:
        try:
            return decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise WorkerReset(f"{what}: unexpected answer: {exc}", engine=self.engine) from exc

    async def probe(self, path: str) -> tuple[int, bytes]:
        """GET within ``health_timeout_s``; raises whatever fails (health's business)."""
        async with asyncio.timeout(self.options.health_timeout_s):
            async with self._http().get(self.url(path)) as resp:
                return resp.status, await resp.read()

    async def health(self) -> Health:
        """ORCH-3003: 200 = ready; another answer = live, not ready; none = not live."""
        try:
            status, body = await self.probe(self.health_path)
        except Exception as exc:  # never raises: any failure means "not live"
            return Health(live=False, ready=False, detail=f"{type(exc).__name__}: {exc}")
        if status == 200:
            return Health(live=True, ready=True)
        return Health(live=True, ready=False, detail=self.not_ready_detail(status, body))

    # -- streaming ------------------------------------------------------------
    async def cancel(self, task_id: str) -> None:
        inflight = self._inflight.get(task_id)
        if inflight is not None:
            inflight.cancelled = True
            inflight.cancel(CancelledByCaller(task_id))

    async def generate(self, req: GenerateRequest) -> AsyncGenerator[AdapterEvent, None]:
        """ORCH-3005..3007. Errors surface from ``__anext__`` as core errors."""
        if req.task_id in self._inflight:
            raise InvalidParams(f"task {req.task_id!r} is already streaming", engine=self.engine)
        path, body = await self.stream_request(req)
        conn = await self._open_stream(path, _encoder.encode(body))
        loop = asyncio.get_running_loop()
        inflight = InFlight(conn, self.options.idle_timeout_s)
        inflight.arm(loop)
        self._inflight[req.task_id] = inflight
        try:
            stream = self.new_decoder(req)
            while True:
                data = await self._read(inflight)
                inflight.last_data = loop.time()
                if data is None:  # cancel(task_id)
                    yield Finished(
                        reason=CANCELED,
                        tokens_generated=stream.tokens_generated,
                        prompt_tokens=stream.prompt_tokens,
                    )
                    return
                if not data:
                    finished = stream.end_of_body()  # raises if the wire was cut short
                    self._done(req.task_id, inflight)
                    yield finished
                    return
                for event in stream.feed(data):
                    if isinstance(event, Finished):
                        inflight.disarm()
                        self._inflight.pop(req.task_id, None)
                        yield event
                        # The caller reads on to the end of the stream: the body's end
                        # (the chunked terminator, usually right behind the final
                        # event) is read within a bound so that the connection can go
                        # back to the pool (ORCH-2720); else it is closed.
                        if self.pool_streams:
                            await _read_to_end(conn)
                        self._done(req.task_id, inflight)
                        return
                    yield event
                if stream.failure is not None:
                    raise stream.failure
        finally:
            self._done(req.task_id, inflight, force_close=True)

    def _streams(self) -> StreamPool:
        if self._closed:
            raise WorkerReset("adapter closed", engine=self.engine)  # ORCH-4106
        if self._pool is None:
            self._pool = StreamPool(
                self.base_url,
                keepalive_s=self.options.keepalive_s,
                connect_timeout_s=self.options.connect_timeout_s,
            )
        return self._pool

    async def _open_stream(self, path: str, body: bytes) -> StreamConn:
        """The stream's connection with a 200 head read (ORCH-2745); a try on a pooled
        connection the engine had closed is sent again (ORCH-2721)."""
        what = f"POST {path}"
        idle = self.options.idle_timeout_s
        pool = self._streams()
        extra = b"" if self.pool_streams else _CLOSE
        trace = ENGINE_TRACE_HEADERS.get()
        if trace:  # ORCH-7044: the task's engine.request span is the engine's parent
            extra += "".join(f"{k}: {v}\r\n" for k, v in trace.items()).encode("latin-1")
        request = pool.request(path, body, extra)
        # Engines may send the headers only with the first result (so an early
        # error is a plain HTTP error); idle_timeout_s bounds that wait too.
        # one deadline over the connect, the retries and the head (ORCH-2964)
        with map_transport_errors(what, self.engine, idle, on_timeout=DecodeTimeout):
            with Deadline(idle):
                for tries in range(_MAX_STALE + 1):
                    conn = await pool.acquire()
                    try:
                        conn.start(request)
                        status = await conn.head()
                    except StaleConnection:
                        if tries == _MAX_STALE:
                            raise
                        self.stale_retries += 1
                        continue
                    except BaseException:
                        conn.close()
                        raise
                    self.pooled_requests += conn.reused
                    break
        if status == 200:
            return conn
        try:
            async with asyncio.timeout(self.options.request_timeout_s):
                payload = await conn.read_all()
        except (OSError, TimeoutError) as exc:
            conn.close()
            raise WorkerReset(
                f"{what}: HTTP {status}, body unreadable", engine=self.engine
            ) from exc
        pool.release(conn)
        raise self.error_from_response(status, payload, what)

    async def _read(self, inflight: InFlight) -> bytes | None:
        """The next bytes of the stream; ``b""`` at EOF; ``None`` if cancelled."""
        try:
            return await inflight.conn.read()
        except CancelledByCaller:
            return None
        except IdleTimeout as exc:
            raise DecodeTimeout(
                f"no bytes from engine for {inflight.idle_s}s during generation",
                engine=self.engine,
            ) from exc
        except OSError as exc:
            if inflight.cancelled:
                return None
            raise WorkerReset(
                f"stream from engine broken: {type(exc).__name__}: {exc}", engine=self.engine
            ) from exc

    def _done(self, task_id: str, inflight: InFlight, *, force_close: bool = False) -> None:
        inflight.disarm()
        if self._inflight.get(task_id) is inflight:
            del self._inflight[task_id]
        if inflight.released:  # already released or draining after its final event
            return
        inflight.released = True
        if force_close or self._pool is None:  # closed meanwhile (ORCH-4106): no pool
            inflight.conn.close()  # drop the socket: the engine sees the disconnect and aborts
        else:
            self._pool.release(inflight.conn)  # pooled only if read to its end


async def _read_to_end(conn: StreamConn) -> None:
    """Read what is left of a finished stream, within ``_DRAIN_S`` and ``_DRAIN_BYTES``;
    the caller pools the connection only if this reached the end."""
    seen = 0
    try:
        async with asyncio.timeout(_DRAIN_S):
            while not conn.at_end and seen <= _DRAIN_BYTES:
                data = await conn.read()
                if not data:
                    return
                seen += len(data)
    except (OSError, TimeoutError):
        return  # not at its end: the caller closes the connection
