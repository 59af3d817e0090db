"""The ``valkey`` state store: every operation is one ``FCALL`` into the ``llorch`` library.

The library (``llorch.lua``) is loaded with ``FUNCTION LOAD REPLACE`` at
:meth:`ValkeyStateStore.start`; each call is atomic at the server, so WRR/DRR/EDF,
capacity, the full policies, the token buckets (on the server's ``TIME``),
``max_concurrent``, slot reservations and session pins stay exact whatever the
number of clients (ORCH-2503, ORCH-2504). Transport failures surface as
:class:`~llama_orch.core.state_store.StoreUnavailable` (ORCH-2516).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from functools import partial
from importlib.resources import files
from typing import Any, Literal, TypeVar, cast

import valkey.asyncio as valkey
from llama_orch.core.config import Priority, StateDurability, StateSentinel
from llama_orch.core.state_store import (
    TERMINAL_KINDS,
    Admitted,
    CancelOutcome,
    Control,
    Dispatched,
    Event,
    InstanceView,
    LoggedEvent,
    Orphaned,
    PlacementHint,
    PoolDrain,
    Preemption,
    Reaped,
    SlotView,
    StateOptions,
    StateStore,
    StateStoreError,
    StoreConfig,
    StoreUnavailable,
    TaskSpec,
    TaskView,
    canceled_terminal,
)
from valkey.asyncio.sentinel import Sentinel
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import ResponseError as ValkeyResponseError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from ._connect import pipe_for
from ._pipe import Pipe, bulk, event_bulks, pack
from ._replies import (
    DISPLACED,
    ORPHANED,
    QUEUED_FMT,
    admitted,
    controls,
    counts,
    decode,
    raise_for,
    step,
    task_view,
)
from ._wire import _config_json, _hint_args, _opt, _s
from .server import EmbeddedServer

__all__ = ["LIBRARY", "ValkeyStateStore"]

LIBRARY = files(__package__).joinpath("llorch.lua").read_text(encoding="utf-8")
R = TypeVar("R")
ReapOutcome = Literal["requeued", "claimed"]  # Reaped.outcome


class ValkeyStateStore(StateStore):
    backend = "valkey"

    def __init__(
        self,
        url: str | None = None,
        *,
        data_dir: str | None = None,
        key_prefix: str = "llorch",
        client: valkey.Valkey | None = None,
        appendfsync: str = "everysec",
        durability: StateDurability | None = None,
        sentinel: StateSentinel | None = None,
    ) -> None:
        if url is not None and sentinel is not None:
            raise ValueError("give either a url or a sentinel, not both")
        self._appendfsync = appendfsync
        self._durability = durability
        self._sentinel = sentinel
        self._url = url
        self._data_dir = data_dir
        self._key_prefix = key_prefix
        self._keys = [f"{{{key_prefix}}}:"]
        self._client = client
        self._server: EmbeddedServer | None = None
        self._sentinels: Sentinel | None = None
        self._pipe: Pipe | None = None  # the llorch calls' connection (ORCH-2595)

    @classmethod
    def from_options(cls, options: StateOptions) -> ValkeyStateStore:
        return cls(
            options.url,
            data_dir=options.data_dir,
            key_prefix=options.key_prefix,
            appendfsync=options.appendfsync,
            durability=options.durability,
            sentinel=options.sentinel,
        )

    @property
    def client(self) -> valkey.Valkey:
        assert self._client is not None, "start() first"
        return self._client

    async def start(self) -> None:
        if self._client is None:
            if self._sentinel is not None:
                self._client = self._sentinel_client(self._sentinel)
            else:
                if self._url is None:
                    self._server = EmbeddedServer(self._data_dir, appendfsync=self._appendfsync)
                    # Provisioning may download and the readiness wait blocks: off the loop.
                    self._url = await asyncio.to_thread(self._server.start)
                # Blocking reads (tail, wait_bell) block <= poll/timeout; keep them under 10 s.
                self._client = valkey.Valkey.from_url(self._url, socket_timeout=10)
        self._pipe = pipe_for(self._client, sentinel=self._sentinel is not None)
        await self._call(lambda: self.client.function_load(LIBRARY, replace=True))
        if self._durability is not None and self._durability.wait_aof:
            # ORCH-2550: fail at startup, not at the first submit, when the server has
            # no WAITAOF (Redis 7.0) or its append-only file is off
            await self._call(lambda: self.client.waitaof(1, 0, 1))

    def _sentinel_client(self, s: StateSentinel) -> valkey.Valkey:
        """The primary of ``master_name`` as the Sentinels name it (ORCH-2553): every
        new connection asks them, so after a failover reconnects reach the promoted
        replica; a connection to a demoted primary is closed on its READONLY answer."""
        hosts = []
        for a in s.addresses:
            host, _, port = a.rpartition(":")
            hosts.append((host, int(port)))
        # valkey's Sentinel.__init__ has no annotations
        self._sentinels = sentinels = Sentinel(  # type: ignore[no-untyped-call]
            hosts,
            socket_timeout=2,
            sentinel_kwargs={"socket_timeout": 2, "password": s.sentinel_password},
        )
        # master_for is untyped; it returns a Valkey client of the default class
        client: valkey.Valkey = sentinels.master_for(
            s.master_name, socket_timeout=10, password=s.password, db=s.db
        )
        return client

    def catalog_backend(self) -> Any:
        """orchestratord's model catalog in this store (ORCH-3383): a
        :class:`~llama_orch.state_valkey.catalog.ValkeyCatalog` on the same server and
        key prefix; after :meth:`start`."""
        from .catalog import ValkeyCatalog

        assert self._url is not None, "start() first"
        return ValkeyCatalog(self._url, self._key_prefix)

    async def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._sentinels is not None:
            for sentinel in self._sentinels.sentinels:
                await sentinel.aclose()
            self._sentinels = None
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.stop)

    async def _call(self, op: Callable[[], Awaitable[R] | R]) -> R:
        try:
            # valkey types each command for both clients (`Awaitable[T] | T`);
            # the asyncio client's always return an awaitable.
            return await cast(Awaitable[R], op())
        except (ValkeyConnectionError, ValkeyTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"state store unreachable: {exc}") from exc
        except ValkeyResponseError as exc:  # e.g. not configured, or a server < 7.0
            raise StateStoreError(f"state store refused the call: {exc}") from exc

    async def _fcall(self, name: str, *args: Any) -> Any:
        if self._pipe is not None:  # ORCH-2595: errors already mapped as _call maps them
            return await self._pipe.call("FCALL", name, 1, self._keys[0], *args)
        # valkey annotates fcall's *keys_and_args as lists: they are the keys and arguments
        return await self._call(lambda: self.client.fcall(name, 1, *self._keys, *args))  # type: ignore[arg-type]

    # ------------------------------------------------------------ config
    async def configure(self, config: StoreConfig) -> None:
        await self._fcall("llorch_configure", _config_json(config))

    async def set_replicas(self, pool: str, replicas: Sequence[SlotView]) -> None:
        flat: list[Any] = []
        for r in replicas:
            flat += [r.replica_id, r.set_key, "1" if r.ready else "0", r.slots]
        await self._fcall("llorch_set_replicas", pool, *flat)

    # ------------------------------------------------------------ admission
    async def submit(self, task: TaskSpec, admitter: str | None = None) -> Admitted:
        if self._durability is not None:
            return await self._submit_durably(task, self._durability, admitter)
        args = self._submit_args(task)
        if admitter:  # recorded with the task (ORCH-2603)
            args.append(admitter)
        return admitted(task, await self._fcall("llorch_submit", *args))

    def _submit_args(self, task: TaskSpec) -> list[Any]:
        return [
            task.task_id,
            task.pool,
            task.priority,
            task.tenant,
            "" if task.deadline_ms is None else str(task.deadline_ms),
            task.pin or "",
            task.session or "",
            task.request,
            DISPLACED,
        ]

    async def _submit_durably(
        self, task: TaskSpec, d: StateDurability, admitter: str | None
    ) -> Admitted:
        """ORCH-2550/2551: the admitting call and WAIT/WAITAOF on one connection (WAIT
        counts the writes of its own connection); not confirmed in time: withdrawn."""
        args = [*self._keys, *self._submit_args(task), *([admitter] if admitter else [])]
        ok, why = False, ""
        try:
            async with self.client.client() as conn:  # one pooled connection, held
                r = await self._call(lambda: conn.fcall("llorch_submit", 1, *args))
                if _s(r[0]) != "OK":
                    return admitted(task, r)
                try:
                    if d.wait_aof:
                        local, replicas = await self._call(
                            lambda: conn.waitaof(1, d.wait_replicas, d.timeout_ms)
                        )
                        ok = int(local) >= 1 and int(replicas) >= d.wait_replicas
                    else:
                        acked = await self._call(lambda: conn.wait(d.wait_replicas, d.timeout_ms))
                        ok = int(acked) >= d.wait_replicas
                except (StoreUnavailable, StateStoreError) as exc:  # unreachable, or WAIT refused
                    why = f": {exc}"
        except (ValkeyConnectionError, ValkeyTimeoutError, OSError) as exc:  # connecting
            raise StoreUnavailable(f"state store unreachable: {exc}") from exc
        if ok:
            return admitted(task, r)
        # Withdrawn: removed from its queue (or stopped, if a dispatcher took it during
        # the wait), quota back, record and log deleted: the task_id can be reused.
        with contextlib.suppress(StoreUnavailable, StateStoreError):
            await self._fcall("llorch_withdraw", task.task_id)
        what = "AOF fsync" if d.wait_aof else "replication"
        raise StoreUnavailable(
            f"the state store did not confirm the admission's {what} "
            f"({d.wait_replicas} replica(s)) within {d.timeout_ms} ms{why}; "
            "the task was not accepted",
            retry_after_ms=max(1000, d.timeout_ms),
        )

    async def submit_dispatch(
        self, task: TaskSpec, instance: str, lease_ms: int, hint: PlacementHint | None = None
    ) -> tuple[Admitted, Dispatched | Orphaned | None]:
        if self._durability is not None:  # the WAIT before the 202 is submit's alone
            return await super().submit_dispatch(task, instance, lease_ms, hint)
        r = await self._fcall(
            "llorch_submit_dispatch",
            *self._submit_args(task),
            instance,
            lease_ms,
            ORPHANED,
            *_hint_args(hint),
        )
        ok = admitted(task, r[0])  # raises a refusal as submit does
        return ok, step(task.pool, r[1])[0]

    async def dispatch(
        self, pool: str, instance: str, lease_ms: int, hint: PlacementHint | None = None
    ) -> Dispatched | Orphaned | None:
        return (await self.dispatch_or_cursor(pool, instance, lease_ms, hint))[0]

    async def dispatch_or_cursor(
        self, pool: str, instance: str, lease_ms: int, hint: PlacementHint | None = None
    ) -> tuple[Dispatched | Orphaned | None, str]:
        # one FCALL: a dispatch that placed nothing answers the doorbell's cursor too
        r = await self._fcall(
            "llorch_dispatch", pool, instance, lease_ms, ORPHANED, *_hint_args(hint)
        )
        return step(pool, r)

    # ------------------------------------------------------------ event log
    async def append(self, task_id: str, epoch: int, events: Sequence[Event]) -> int:
        flat: list[Any] = []
        for ev in events:
            flat += [ev.kind, ev.data]
        r = await self._fcall("llorch_append", task_id, epoch, *flat)
        raise_for(_s(r[0]), task_id)
        return int(r[1])

    async def append_many(
        self, batches: Sequence[tuple[str, int, Sequence[Event]]]
    ) -> list[int | StateStoreError | KeyError | ValueError]:
        if self._pipe is not None:  # ORCH-2621: the events packed straight into the command
            tail: list[bytes] = []
            for task_id, epoch, events in batches:
                tail += (bulk(task_id.encode()), bulk(b"%d" % epoch), bulk(b"%d" % len(events)))
                event_bulks(events, tail)
            head = ("FCALL", "llorch_append_many", 1, self._keys[0])
            replies = await self._pipe.call_packed(pack(head, tail))
        else:
            flat: list[Any] = []
            for task_id, epoch, events in batches:
                flat += [task_id, epoch, len(events)]
                for ev in events:
                    flat += [ev.kind, ev.data]
            replies = await self._fcall("llorch_append_many", *flat)
        out: list[int | StateStoreError | KeyError | ValueError] = []
        for (task_id, _, _), r in zip(batches, replies, strict=True):
            try:
                raise_for(_s(r[0]), task_id)
                out.append(int(r[1]))
            except (StateStoreError, KeyError, ValueError) as exc:
                out.append(exc)
        return out

    def _log_key(self, task_id: str) -> str:
        return f"{self._keys[0]}log:{task_id}"

    async def read(self, task_id: str, after: int = -1) -> list[LoggedEvent]:
        entries = await self._call(
            lambda: self.client.xrange(self._log_key(task_id), f"0-{after + 2}", "+")
        )
        if not entries and not await self._call(
            lambda: self.client.exists(f"{self._keys[0]}t:{task_id}")
        ):
            raise KeyError(task_id)
        return decode(entries)

    async def tail(
        self, task_id: str, after: int = -1, *, poll_s: float = 1.0
    ) -> AsyncIterator[LoggedEvent]:
        key = self._log_key(task_id)
        while True:
            # XREAD BLOCK on the caller's connection pool; socket timeout (10 s) > block.
            # It answers at once with every event already logged, so the replay needs
            # no XRANGE of its own: one round trip per batch of events (ORCH-2565); the
            # task's existence is checked only when nothing came within ``poll_s``.
            streams = {key: f"0-{after + 1}"}
            got = await self._call(partial(self.client.xread, streams, block=int(poll_s * 1000)))
            for _, entries in got or []:
                for ev in decode(entries):
                    yield ev
                    after = ev.seq
                    if ev.kind in TERMINAL_KINDS:
                        return
            if not got and not await self._call(
                lambda: self.client.exists(f"{self._keys[0]}t:{task_id}")
            ):
                raise KeyError(task_id)

    # ------------------------------------------------------------ cancel, leases
    async def cancel(self, task_id: str, terminal: Event | None = None) -> CancelOutcome:
        ev = terminal or canceled_terminal()
        # the default terminal's tokens_out is counted at the server, in the same step
        count = "" if terminal is not None else "count"
        r = await self._fcall("llorch_cancel", task_id, ev.kind, ev.data, count)
        raise_for(_s(r[0]), task_id)
        # the library answers one of CancelOutcome's values
        return cast(CancelOutcome, _s(r[1]))

    async def requeue(self, task_id: str, epoch: int) -> None:
        r = await self._fcall("llorch_requeue", task_id, epoch)
        raise_for(_s(r[0]), task_id)

    async def renew(self, instance: str, leases: Mapping[str, int], lease_ms: int) -> list[str]:
        flat: list[Any] = []
        for tid, epoch in leases.items():
            flat += [tid, epoch]
        return [_s(x) for x in await self._fcall("llorch_renew", instance, lease_ms, *flat)]

    async def reap(self, instance: str, lease_ms: int, max_requeues: int = 2) -> list[Reaped]:
        out = []
        for tid, outcome, epoch, next_seq, replica in await self._fcall(
            "llorch_reap", instance, lease_ms, max_requeues
        ):
            view = await self.task(_s(tid))
            assert view is not None
            out.append(
                Reaped(
                    task_id=_s(tid),
                    # the library answers "requeued" or "claimed"
                    outcome=cast(ReapOutcome, _s(outcome)),
                    epoch=int(epoch),
                    task=view.task,
                    next_seq=int(next_seq),
                    replica_id=_opt(replica) or None,
                )
            )
        return out

    # ------------------------------------------------------------ views
    async def task(self, task_id: str) -> TaskView | None:
        h = await self._call(lambda: self.client.hgetall(f"{self._keys[0]}t:{task_id}"))
        if not h:
            return None
        return task_view(task_id, h)

    # ------------------------------------------------------------ waiting tasks
    async def positions(self, task_ids: Sequence[str]) -> dict[str, int]:
        if not task_ids:
            return {}
        return counts(await self._fcall("llorch_positions", *task_ids))

    async def announce_queued(
        self, notes: Sequence[tuple[str, int]], interval_ms: int
    ) -> dict[str, int]:
        if not notes:
            return {}
        flat: list[Any] = []
        for tid, eta in notes:
            flat += [tid, int(eta)]
        return counts(await self._fcall("llorch_announce", interval_ms, QUEUED_FMT, *flat))

    async def expire(self, task_id: str, terminal: Event) -> bool:
        return bool(await self._fcall("llorch_expire", task_id, terminal.kind, terminal.data))

    async def bell(self, pool: str) -> str:
        last = await self._call(
            lambda: self.client.xrevrange(f"{self._keys[0]}bell:{pool}", count=1)
        )
        return _s(last[0][0]) if last else "0-0"

    async def wait_bell(self, pool: str, cursor: str, timeout_s: float) -> str:
        key = f"{self._keys[0]}bell:{pool}"
        # At most 5 s per call: the socket timeout (10 s) must exceed the block time;
        # a longer wait returns early with the same cursor (a spurious wake-up).
        block = min(5000, max(1, int(timeout_s * 1000)))
        got = await self._call(partial(self.client.xread, {key: cursor}, count=1000, block=block))
        for _, entries in got or []:
            if entries:
                cursor = _s(entries[-1][0])
        return cursor

    # ------------------------------------------------------------ control, liveness
    def _ctl_key(self, instance: str) -> str:
        return f"{self._keys[0]}ctl:{instance}"

    async def control_cursor(self, instance: str) -> str:
        last = await self._call(lambda: self.client.xrevrange(self._ctl_key(instance), count=1))
        return _s(last[0][0]) if last else "0-0"

    async def wait_control(
        self, instance: str, cursor: str, timeout_s: float
    ) -> tuple[str, list[Control]]:
        # XREAD BLOCK, at most 5 s per call (under the 10 s socket timeout), as wait_bell
        block = min(5000, max(1, int(timeout_s * 1000)))
        key = self._ctl_key(instance)
        got = await self._call(partial(self.client.xread, {key: cursor}, count=1000, block=block))
        return controls(got, cursor)

    async def heartbeat(self, instance: str, ttl_ms: int) -> None:
        await self._fcall("llorch_heartbeat", instance, ttl_ms)

    async def instances(self) -> list[InstanceView]:
        flat = await self._fcall("llorch_instances")
        return sorted(
            (
                InstanceView(instance_id=_s(flat[i]), expires_in_ms=int(flat[i + 1]))
                for i in range(0, len(flat), 2)
            ),
            key=lambda v: v.instance_id,
        )

    async def busy(self, pool: str) -> dict[str, int]:
        h = await self._call(lambda: self.client.hgetall(f"{self._keys[0]}busy:{pool}"))
        return {_s(k): int(v) for k, v in h.items() if int(v)}

    async def move(self, task_id: str, epoch: int, replica_id: str) -> bool:
        """One ``llorch_move`` (ORCH-2574)."""
        r = await self._fcall("llorch_move", task_id, epoch, replica_id)
        raise_for(_s(r[0]), task_id)
        return int(r[1]) == 1

    async def head(self, pool: str) -> tuple[Priority, str | None] | None:
        """One ``llorch_head`` (ORCH-2579)."""
        r = await self._fcall("llorch_head", pool)
        if not r:
            return None
        return cast(Priority, _s(r[0])), _opt(r[1]) or None

    async def preempt(
        self, pool: str, instance: str, replicas: Sequence[str], ttl_ms: int
    ) -> Preemption | None:
        """One ``llorch_preempt`` (ORCH-2597)."""
        r = await self._fcall("llorch_preempt", pool, instance, int(ttl_ms), *replicas)
        return Preemption(task_id=_s(r[0]), owner=_s(r[1])) if r else None

    async def session_pin(self, session: str) -> tuple[str, str] | None:
        s = await self._call(
            lambda: self.client.hmget(f"{self._keys[0]}sess:{session}", ["set", "replica"])
        )
        if s[0] is None:
            return None
        return _s(s[0]), _s(s[1])

    # ------------------------------------------------------------ pool drains
    async def drain_pool(self, pool: str, deadline_ms: int) -> PoolDrain:
        left, *tasks = await self._fcall("llorch_drain_pool", pool, int(deadline_ms))
        return PoolDrain(pool=pool, deadline_in_ms=int(left), tasks=tuple(_s(t) for t in tasks))

    async def undrain_pool(self, pool: str) -> bool:
        return bool(await self._fcall("llorch_undrain_pool", pool))

    async def drains(self) -> list[PoolDrain]:
        flat = await self._fcall("llorch_drains")
        return sorted(
            (
                PoolDrain(pool=_s(flat[i]), deadline_in_ms=int(flat[i + 1]))
                for i in range(0, len(flat), 2)
            ),
            key=lambda d: d.pool,
        )

    async def queued(self, pool: str) -> list[str]:
        """One ``llorch_queued`` (ORCH-2600)."""
        return [_s(t) for t in await self._fcall("llorch_queued", pool)]

    async def unattended(self, pool: str) -> list[str]:
        """One ``llorch_unattended`` (ORCH-2603)."""
        return [_s(t) for t in await self._fcall("llorch_unattended", pool)]

    async def end_queued(self, pool: str, terminal: Event) -> list[str]:
        ended = await self._fcall("llorch_end_queued", pool, terminal.kind, terminal.data)
        return [_s(t) for t in ended]
