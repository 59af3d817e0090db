"""Frontends: other HTTP APIs on the same task queue (ORCH-9100..ORCH-9104).

A frontend is a distribution that registers a :class:`Frontend` subclass under
the entry-point group ``llama_orch.frontends`` (ORCH-9100). orchestratord
mounts the routes of every installed frontend next to OrchQueue v1; a broken
one is skipped with a log line, never mounted half-way.

A frontend never touches the queue directly: it talks to the daemon through
:class:`FrontendHost`, the in-process submit/stream/cancel API, so each of its
requests is a task admitted by the same path as ``POST /v1/tasks`` (schema,
pool, ctx, quotas, budgets, full-queue policy; ORCH-9101) and streamed from the
same event log.

Unlike adapters, frontends depend on this daemon: they mount Starlette routes
into its app and call it in-process. The contract is this one file.
"""

from __future__ import annotations

import abc
import logging
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from importlib.metadata import entry_points
from typing import Any, ClassVar, TypeVar

import msgspec
from llama_orch.core.adapter_api import (
    ENGINE_TRACE_HEADERS,
    Capability,
    Embeddings,
    WorkerAdapter,
)
from llama_orch.core.api import (
    EndEvent,
    ErrorEvent,
    MetricsEvent,
    QueuedEvent,
    StartedEvent,
    StreamEvent,
    TaskRequest,
    TokenEvent,
)
from llama_orch.core.errors import AdmissionRejected, ErrorCode, OrchError
from llama_orch.core.quota import TenantBusy
from starlette.requests import Request
from starlette.routing import BaseRoute

from .auth import Authenticator, Principal
from .forecast_pass import tenant_wait_ms
from .limits import StreamCounter
from .pools import Pool
from .service import Orchestrator
from .streaming import check_stream_quota
from .tasks import KEEPALIVE_FRAME, TaskRecord

__all__ = [
    "FRONTEND_ENTRY_POINT_GROUP",
    "Frontend",
    "FrontendHost",
    "load_frontends",
]

FRONTEND_ENTRY_POINT_GROUP = "llama_orch.frontends"
_log = logging.getLogger("llama_orch.orchestratord")

_encoder = msgspec.json.Encoder()
_event_decoders: dict[bytes, msgspec.json.Decoder[StreamEvent]] = {
    b"queued": msgspec.json.Decoder(QueuedEvent),  # position and ETA while waiting (ORCH-1961)
    b"started": msgspec.json.Decoder(StartedEvent),
    b"token": msgspec.json.Decoder(TokenEvent),
    b"metrics": msgspec.json.Decoder(MetricsEvent),
    b"end": msgspec.json.Decoder(EndEvent),
    b"error": msgspec.json.Decoder(ErrorEvent),
}


class Frontend(abc.ABC):
    """Base class of a frontend: an HTTP API served by orchestratord."""

    name: ClassVar[str]
    lean_routes: ClassVar[frozenset[tuple[str, str]]] = frozenset()
    """(method, path) of routes among :meth:`routes` (a ``Route`` without path
    parameters and with an async function endpoint) that orchestratord serves below
    Starlette's routing, as the task API's submit and stream (ORCH-2786)."""

    @abc.abstractmethod
    def routes(self, host: FrontendHost) -> Sequence[BaseRoute]:
        """The routes to mount; each one authenticates through ``host.principal``."""


def load_frontends() -> list[Frontend]:
    """An instance of every installed frontend; a broken one is logged and skipped."""
    found: list[Frontend] = []
    for ep in sorted(entry_points(group=FRONTEND_ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Frontend)):
                raise TypeError(f"{ep.value} is not a Frontend subclass")
            found.append(cls())
        except Exception as exc:
            _log.error("frontend %r not mounted: %s", ep.name, exc)
    return found


def _decode_frame(frame: bytes) -> tuple[int, StreamEvent]:
    """One frame of a task's log (``id: N\\nevent: E\\ndata: J\\n\\n``) back to its event."""
    head, _, rest = frame.partition(b"\nevent: ")
    name, _, data = rest.partition(b"\ndata: ")
    return int(head[4:]), _event_decoders[name].decode(data.rstrip(b"\n"))


# ORCH-2956: the events of a task's own log (this instance's record) by their place in it
# and their data alone: the data's JSON carries the event's tag (the frame's ``event:``)
_log_decoder: msgspec.json.Decoder[StreamEvent] = msgspec.json.Decoder(
    QueuedEvent | StartedEvent | TokenEvent | MetricsEvent | EndEvent | ErrorEvent
)
_log_event = _log_decoder.decode


def _frame_event(frame: bytes) -> StreamEvent:
    """A frame's event, from its ``data:`` line (JSON ignores the blank line after it)."""
    return _log_event(frame[frame.index(b"\ndata: ") + 7 :])


def _numbered(frames: list[bytes], seq: int) -> Iterator[tuple[int, StreamEvent]]:
    """The events of consecutive frames numbered from ``seq``, each decoded when read."""
    for frame in frames:
        yield seq, _log_event(frame[frame.index(b"\ndata: ") + 7 :])
        seq += 1


_S = TypeVar("_S")


class FrontendHost:
    """What a frontend may do with the daemon: authenticate, submit, stream, cancel.

    One per application, at ``app.state.frontends``: a frontend's module-level
    endpoints find it with :meth:`of` and their own typed state, attached once in
    :meth:`Frontend.routes`, with :meth:`state` (ORCH-4122)."""

    def __init__(
        self, orch: Orchestrator, auth: Authenticator, streams: StreamCounter | None = None
    ) -> None:
        self.orch = orch
        self._auth = auth
        # the tenants' open streams, shared with the task API's (ORCH-8013, ORCH-9117)
        self.streams = streams if streams is not None else StreamCounter()
        self._states: dict[type, object] = {}
        self._caps: weakref.WeakKeyDictionary[WorkerAdapter, frozenset[Capability]] = (
            weakref.WeakKeyDictionary()
        )

    @staticmethod
    def of(request: Request) -> FrontendHost:
        """The host of the application serving ``request``."""
        host = request.app.state.frontends
        assert isinstance(host, FrontendHost)
        return host

    def attach(self, state: object) -> None:
        """Keep a frontend's state, found again by its type with :meth:`state`."""
        self._states[type(state)] = state

    def check_stream(self, tenant: str) -> None:
        """ORCH-9117: a streamed answer beyond ``tenant``'s open streams is refused
        before admission (ORCH-8013's 429, ``quota``; counted, ORCH-8019)."""
        check_stream_quota(self.streams, tenant, self.orch.config.limits)

    def state(self, kind: type[_S]) -> _S:
        found = self._states[kind]
        assert isinstance(found, kind)
        return found

    @property
    def pools(self) -> dict[str, Pool]:
        return self.orch.pools

    def principal(self, request: Request, api: str) -> Principal:
        """The tenant behind ``Authorization: Bearer`` or ``x-api-key`` (ORCH-9102); a
        refusal is counted for ``api`` (ORCH-8017)."""
        if not self._auth.enabled:
            return self._auth.check(request, "tenant")
        header = request.headers.get("authorization")
        if header is None and (key := request.headers.get("x-api-key")):
            header = f"Bearer {key}"
        who = self._auth.identify(header, api)
        if who.role != "tenant":
            raise self._auth.forbidden(who, "tenant", api)
        return who

    async def submit(
        self,
        req: TaskRequest,
        tenant: str,
        *,
        api: str,
        json_schema: dict[str, Any] | None = None,
        logprobs: int | None = None,
        idempotency_key: str | None = None,
        attempt: int | None = None,
        note: bytes | None = None,
    ) -> TaskRecord:
        """Admit ``req`` exactly as ``POST /v1/tasks`` would, or raise its OrchError
        (counted as rejected by the daemon). ``api`` labels the admission counters
        and the task's end log (ORCH-9103, ORCH-9220).

        ``json_schema`` and ``logprobs`` are engine fields OrchQueue v1 does not
        carry (ORCH-9104): they join the engine request right after admission,
        before the dispatcher can run (no await in between). The caller checked
        the pool's capabilities (:meth:`capabilities`).

        ``idempotency_key`` and ``attempt``: the client's idempotency key and retry
        count, if it sends them, for the retry reservations (ORCH-1979); without a
        key the request is known by a digest of its tenant, API and task.

        ``note``: the frontend's own fields of the request (opaque bytes), kept with
        the task's record and, with a state store, stored with its admission, so that
        another instance finds them (ORCH-2592)."""
        extra = None
        if json_schema is not None or logprobs is not None:
            extra = {"json_schema": json_schema, "logprobs": logprobs}
        # the engine fields are part of the request admission records, so a state
        # store holds them too and any instance runs the task with them (ORCH-2564)
        accepted = await self.orch.submit(
            _encoder.encode(req),
            tenant,
            api=api,
            extra=extra,
            idempotency_key=idempotency_key,
            attempt=attempt,
            note=note,
        )
        rec = self.orch.tasks.get(accepted.task_id)
        assert rec is not None  # added in the same step, nothing evicts an active task
        return rec

    def rejected(self, pool: Pool | None, code: ErrorCode, api: str) -> None:
        """Count a request the frontend refused before admission (ORCH-9114, ORCH-9220)."""
        self.orch.metrics.tasks_rejected.add(
            1,
            {
                "reason": code.value,
                "policy": "none",
                "pool_id": pool.id if pool else "none",
                "engine": pool.engine if pool else "none",
                "api": api,
            },
        )

    async def capabilities(self, pool: Pool) -> frozenset[Capability] | None:
        """What the pool's engine adapter declares (ORCH-9202), asked once per adapter;
        ``None`` while the pool has no Ready replica (admission answers that)."""
        adapter = pool.any_adapter()
        if adapter is None:
            return None
        caps = self._caps.get(adapter)
        if caps is None:
            caps = self._caps[adapter] = (await adapter.props()).capabilities
        return caps

    async def embed(self, pool: Pool, texts: list[str], tenant: str, *, api: str) -> Embeddings:
        """Embed ``texts`` on a Ready replica of ``pool`` with a free slot (ORCH-9212).

        The request holds that slot while the engine works, so the dispatcher and
        every forecast see it as load; it never waits in the queue: with no free
        slot (or the tenant's quota spent) it raises AdmissionRejected with the
        pool's retry delay. Counted in ``embeddings_total`` and ``tokens_in_total``;
        refusals in ``tasks_rejected_total``.
        """
        replica = max(
            (r for r in pool.replicas.values() if r.free_slots > 0),
            key=lambda r: r.free_slots,
            default=None,
        )
        try:
            if replica is None:
                raise AdmissionRejected(
                    f"pool {pool.id} has no free slot for an embedding request",
                    pool_id=pool.id,
                    engine=pool.engine,
                    retry_after_ms=self.orch.workload.retry_after_ms(pool),
                )
            self.orch.quotas.admit(
                tenant, "interactive", self.orch.tasks.in_flight(tenant), time.monotonic()
            )
        except AdmissionRejected as exc:
            exc.pool_id, exc.engine = pool.id, pool.engine
            if isinstance(exc, TenantBusy):  # ORCH-1125: when one of its own tasks ends
                orch, mine = self.orch, self.orch.tasks.in_flight_of(tenant)
                exc.retry_after_ms = tenant_wait_ms(orch.workload, orch.pools, mine, tenant, pool)
            self.orch.metrics.tasks_rejected.add(
                1,
                {"reason": exc.code.value, "policy": exc.policy_label or "none",
                 "pool_id": pool.id, "engine": pool.engine, "api": api},
            )  # fmt: skip
            raise
        replica.busy += 1
        # ORCH-7047: no task, no span of ours: the engine continues the client's trace
        forwarded = self.orch.tracing.forwarded() if self.orch.tracing.enabled else None
        token = ENGINE_TRACE_HEADERS.set(forwarded) if forwarded else None
        try:
            out = await replica.adapter.embed(texts)
        finally:
            if token is not None:
                ENGINE_TRACE_HEADERS.reset(token)
            replica.busy -= 1
            pool.wakeup.set()  # the slot is free again for queued tasks
        st = replica.state
        attrs = {"engine": pool.engine, "engine_version": st.engine_version,
                 "pool_id": pool.id, "replica_id": st.replica_id}  # fmt: skip
        self.orch.metrics.embeddings.add(1, {"engine": pool.engine, "pool_id": pool.id, "api": api})
        if out.prompt_tokens:
            self.orch.metrics.tokens_in.add(out.prompt_tokens, attrs)
        return out

    def task(self, task_id: str, tenant: str | None) -> TaskRecord | None:
        """The task if ``tenant`` owns it (``None``: auth disabled, any task)."""
        rec = self.orch.tasks.get(task_id)
        if rec is None or (tenant is not None and rec.tenant != tenant):
            return None
        return rec

    async def find(self, task_id: str, tenant: str | None) -> TaskRecord | None:
        """:meth:`task`, and with a state store also a task another instance (or this
        one before a restart) admitted, as the task API finds it (ORCH-2526, ORCH-2593)."""
        if self.orch.state is not None:
            await self.orch.state.hydrate(task_id)
        return self.task(task_id, tenant)

    async def events(
        self, rec: TaskRecord, start: int = 0
    ) -> AsyncIterator[tuple[int, StreamEvent]]:
        """The task's events from number ``start`` on, waiting for new ones, to the end.
        With a state store, the store's log: the same events whichever instance runs
        the task (ORCH-2564)."""
        if self.orch.state is not None:
            async for frame in self.orch.state.frames(rec.task_id, start, joined=False):
                if frame != KEEPALIVE_FRAME:
                    yield _decode_frame(frame)
            return
        seq = max(0, start)  # ORCH-2956: the frames come in order from there, one a chunk
        async for frame in rec.frames(start, 1):
            yield seq, _frame_event(frame)
            seq += 1

    async def event_batches(
        self, rec: TaskRecord, start: int = 0
    ) -> AsyncIterator[Iterator[tuple[int, StreamEvent]]]:
        """Like :meth:`events`, the events available together as one batch, so that a
        facade writes them as one message (ORCH-2763); each decoded when the batch is
        read, so the first can go out before the rest is decoded. Frames end with a
        blank line and carry single-line JSON, so the joined chunk splits back into its
        frames."""
        if self.orch.state is not None:
            async for frame in self.orch.state.frames(rec.task_id, start, joined=False):
                if frame != KEEPALIVE_FRAME:
                    yield iter((_decode_frame(frame),))
            return
        seq = max(0, start)  # ORCH-2956: a chunk holds the frames from ``seq`` on, in order
        async for chunk in rec.frames(start):
            frames = chunk.split(b"\n\n")
            frames.pop()  # the chunk ends with a frame's blank line: nothing after it
            yield _numbered(frames, seq)
            seq += len(frames)

    def events_now(self, rec: TaskRecord) -> list[StreamEvent]:
        """The task's events appended so far, without waiting."""
        return [_frame_event(f) for f in rec.frames_so_far()]

    async def events_so_far(self, rec: TaskRecord) -> list[StreamEvent]:
        """:meth:`events_now`; with a state store, the store's log: the same events
        whichever instance runs or ran the task (ORCH-2593)."""
        if self.orch.state is None:
            return self.events_now(rec)
        try:
            logged = await self.orch.state.store.read(rec.task_id)
        except KeyError:  # past the store's retention: what this instance holds
            return self.events_now(rec)
        return [_event_decoders[ev.kind.encode()].decode(ev.data) for ev in logged]

    def cancel(self, rec: TaskRecord) -> None:
        """End the task now (``canceled``) and free its engine slot. With a state store
        the cancel goes to the store as well, which ends it whichever instance holds or
        runs it (ORCH-2564, ORCH-2510)."""
        if self.orch.state is not None:
            self.orch.state.cancel_soon(rec.task_id)
        try:
            self.orch.cancel(rec.task_id)
        except OrchError:  # evicted meanwhile: nothing left to cancel
            pass

    async def cancel_now(self, rec: TaskRecord) -> None:
        """:meth:`cancel`, returning once a state store holds the cancel's terminal
        (ORCH-2593), as ``POST /v1/tasks/{id}/cancel`` does."""
        if self.orch.state is not None:
            await self.orch.state.cancel(rec.task_id)
        try:
            self.orch.cancel(rec.task_id)
        except OrchError:  # evicted meanwhile: nothing left to cancel
            pass
