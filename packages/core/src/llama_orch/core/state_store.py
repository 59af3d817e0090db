"""The state-store seam: admission, dispatch, event logs, leases and fencing (ORCH-2501).

One typed async protocol, :class:`StateStore`, holds everything several
orchestratord instances must agree on (``.specs/25-state-store.md``):

* **admission** — :meth:`StateStore.submit` applies ``max_concurrent``, the
  tenant and priority token buckets (on the *store's* clock), the pool's
  capacity and its full policy, and appends the terminal event of every task
  it displaces in the same atomic step (ORCH-2504..2506);
* **dispatch** — :meth:`StateStore.dispatch` picks the next task in WRR/DRR/EDF
  order, places it on a replica with a free slot under its pin (strict
  determinism or session), reserves that slot, and hands the caller a
  **fencing epoch** and a lease (ORCH-2507, ORCH-2511);
* **event log** — :meth:`append` / :meth:`read` / :meth:`tail`; 0-based ``seq``
  values are the SSE ``id:`` values, identical from every instance, with
  exactly one terminal event per task (ORCH-2508);
* **fencing** — every write by the instance that runs a task carries the
  epoch it got from ``dispatch`` or ``reap``; the store refuses a stale one with
  :class:`Fenced` (ORCH-2509);
* **cancel** — atomic at the store: the terminal is appended in the same step,
  so no token can follow it whichever instance runs the task (ORCH-2510);
* **leases** — :meth:`renew` and :meth:`reap` (ORCH-2511).

Backends are plugins in the entry-point group ``llama_orch.state_stores``:
``memory`` (this distribution, :mod:`llama_orch.core.state_memory`) and
``valkey`` (``llama-orch-state-valkey``). This module does no I/O.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from ._state_events import (
    TERMINAL_KINDS,
    Continuation,
    Event,
    LoggedEvent,
    canceled_terminal,
    continuation,
    displaced_terminal,
    orphaned_terminal,
    queued_event,
    queued_note_due,
)
from .config import FullPolicy, Priority, RateLimit, StateOptions, TenantConfig
from .errors import ErrorCode, InvalidParams, PoolUnavailable

__all__ = [
    "STATE_STORE_ENTRY_POINT_GROUP",
    "TERMINAL_KINDS",
    "Admitted",
    "CancelOutcome",
    "Canceled",
    "Continuation",
    "Control",
    "Dispatched",
    "DuplicateTask",
    "Event",
    "Fenced",
    "InstanceView",
    "LoggedEvent",
    "Orphaned",
    "PlacementHint",
    "PoolDrain",
    "PoolPolicy",
    "Preemption",
    "Reaped",
    "SlotView",
    "StateOptions",
    "StateStore",
    "StateStoreError",
    "StoreConfig",
    "StoreUnavailable",
    "TaskEnded",
    "TaskSpec",
    "TaskView",
    "UnknownStateStore",
    "canceled_terminal",
    "continuation",
    "displaced_terminal",
    "draining_refusal",
    "load_state_store_class",
    "orphaned_terminal",
    "queued_event",
    "queued_note_due",
]

STATE_STORE_ENTRY_POINT_GROUP = "llama_orch.state_stores"

# --------------------------------------------------------------------- errors
#
#     StateStoreError                 internal: never rendered to a client as such
#     ├── Fenced                      stale epoch: the caller lost the task (ORCH-2509)
#     ├── TaskEnded                   the task already has its terminal event (ORCH-2508)
#     │   └── Canceled                ... and it was a cancel (ORCH-2510)
#     └── UnknownStateStore           no such backend plugin (ORCH-2501)
#     DuplicateTask(InvalidParams)    400: the task id is already known
#     StoreUnavailable(PoolUnavailable) 503 + Retry-After (ORCH-2516)


class StateStoreError(Exception):
    """Base of the state store's internal errors."""


class Fenced(StateStoreError):
    """The epoch presented is not the task's current one: another instance owns it now."""


class TaskEnded(StateStoreError):
    """The task already has its terminal event; nothing may be appended any more."""


class Canceled(TaskEnded):
    """The task was canceled; its ``end{canceled}`` is already in the log."""


class UnknownStateStore(StateStoreError):
    """``state.backend`` names no installed ``llama_orch.state_stores`` plugin."""


class DuplicateTask(InvalidParams):
    """``task_id`` was already submitted (ORCH-1005)."""


class StoreUnavailable(PoolUnavailable):
    """The store cannot be reached: fail closed with 503 and ``Retry-After`` (ORCH-2516)."""

    def __init__(self, message: str, *, retry_after_ms: int = 1000) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


# ------------------------------------------------------------------ the model

NonNegInt = Annotated[int, Meta(ge=0)]


class PoolPolicy(msgspec.Struct, frozen=True, kw_only=True):
    capacity: Annotated[int, Meta(ge=1)]
    full_policy: FullPolicy = "reject"
    priority_weights: dict[str, int] = msgspec.field(
        default_factory=lambda: {"interactive": 8, "batch": 1}
    )


class StoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The admission rules every instance pushes at startup (same config ⇒ same rules)."""

    pools: dict[str, PoolPolicy]
    tenants: dict[str, TenantConfig] = msgspec.field(default_factory=dict)
    default_tenant: TenantConfig = msgspec.field(default_factory=TenantConfig)
    priorities: dict[str, RateLimit] = msgspec.field(default_factory=dict)
    event_log_retention_ms: Annotated[int, Meta(ge=1)] = 600_000
    session_ttl_ms: Annotated[int, Meta(ge=1)] = 600_000


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What admission needs to know about a task; ``request`` is opaque to the store
    (the caller's encoded request, kept for continuation after a takeover)."""

    task_id: str
    pool: str
    priority: Priority
    tenant: str = "default"
    deadline_ms: int | None = None  # EDF key, epoch ms (ORCH-1111)
    pin: str | None = None  # replica-set key the task must run on (ORCH-1302)
    session: str | None = None  # later turns are pinned to the session's set (ORCH-1116)
    request: bytes = b""


class SlotView(msgspec.Struct, frozen=True, kw_only=True):
    """One replica as the store sees it; ``busy`` is the store's own count."""

    replica_id: str
    set_key: str
    ready: bool
    slots: NonNegInt


class Admitted(msgspec.Struct, frozen=True, kw_only=True):
    queue_position: int
    displaced: list[tuple[str, ErrorCode]] = msgspec.field(default_factory=list)


class Dispatched(msgspec.Struct, frozen=True, kw_only=True):
    task: TaskSpec
    replica_id: str
    set_key: str
    epoch: int
    requeues: int = 0
    # the seq the owner's first append gets: events before it (``queued`` ones, or
    # an earlier run's) are the store's; the owner's own start here (ORCH-2571)
    next_seq: int = 0
    # every Ready replica of the chosen set with its free slots before this dispatch's
    # reservation, by id, and the session's last replica: what the instance's placement
    # policy and hook choose among (ORCH-2572, ORCH-2573)
    candidates: list[tuple[str, int]] = msgspec.field(default_factory=list)
    affinity: str | None = None


class PlacementHint(msgspec.Struct, frozen=True, kw_only=True):
    """What the dispatching instance's placement policy needs to pick inside the store's
    dispatch step (ORCH-2578), so that the store's choice already is the policy's:
    ``loads``, the work this instance has assigned to each replica (the tie-break of
    ORCH-1907 and the set choice's); ``rotate_after`` with ``round_robin``, the replica
    this instance picked last (ORCH-2311)."""

    loads: dict[str, int] = msgspec.field(default_factory=dict)
    round_robin: bool = False
    rotate_after: str | None = None


class Orphaned(msgspec.Struct, frozen=True, kw_only=True):
    """The head was pinned to a set with no Ready replica: ended with ``POOL_UNAVAILABLE``."""

    task_id: str


class Reaped(msgspec.Struct, frozen=True, kw_only=True):
    """An expired lease: ``requeued`` (no event yet) or ``claimed`` by the reaper under
    a new ``epoch`` for continuation or a typed end (ORCH-2511)."""

    task_id: str
    outcome: Literal["requeued", "claimed"]
    epoch: int
    task: TaskSpec
    next_seq: int
    replica_id: str | None = None


CancelOutcome = Literal["queued", "running", "ended"]


class Control(msgspec.Struct, frozen=True, array_like=True):
    """A message on an instance's control channel (ORCH-2540): ``cancel`` tells the
    owner of ``task_id`` that the task was canceled elsewhere, so it aborts the run;
    ``drain`` / ``undrain`` tell every live instance that ``pool_id`` was drained or
    brought back at the store (ORCH-2585), ``task_id`` then empty; ``preempt`` tells
    the owner of ``task_id`` in ``pool_id`` to interrupt that run (ORCH-2597)."""

    op: Literal["cancel", "drain", "undrain", "preempt"]
    task_id: str
    pool_id: str = ""


class Preemption(msgspec.Struct, frozen=True, kw_only=True):
    """The run :meth:`StateStore.preempt` chose to interrupt and its owner (ORCH-2597)."""

    task_id: str
    owner: str


class PoolDrain(msgspec.Struct, frozen=True, kw_only=True):
    """A pool drained at the store (ORCH-2585): its deadline as the time left on the
    store's clock (0 once it passed); from ``drain_pool``, the pool's tasks queued or
    running at its step, sorted (ORCH-2609)."""

    pool: str
    deadline_in_ms: NonNegInt
    tasks: tuple[str, ...] = ()


def draining_refusal(pool: str) -> PoolUnavailable:
    """The refusal of a task for a drained pool: ORCH-1604's, from the store (ORCH-2586)."""
    return PoolUnavailable(f"pool {pool} is draining", pool_id=pool)


class InstanceView(msgspec.Struct, frozen=True, kw_only=True):
    """A live instance: it sent a heartbeat whose time-to-live has not run out (ORCH-2543)."""

    instance_id: str
    expires_in_ms: int


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    task: TaskSpec
    state: Literal["queued", "running", "ended"]
    epoch: int
    owner: str | None
    next_seq: int
    requeues: int
    replica_id: str | None
    canceled: bool


# ------------------------------------------------- store-generated terminals


class StateStore(abc.ABC):
    """Shared task state. Every method is one atomic step at the store."""

    backend: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_options(cls, options: StateOptions) -> StateStore:
        """Build an unstarted store from ``state:`` config."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (or provision); idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and anything ``start`` provisioned."""

    @abc.abstractmethod
    async def configure(self, config: StoreConfig) -> None:
        """Install the admission rules (pools, weights, quotas). Idempotent."""

    @abc.abstractmethod
    async def set_replicas(self, pool: str, replicas: Sequence[SlotView]) -> None:
        """Replace the pool's replicas; busy counts of kept replicas are preserved."""

    @abc.abstractmethod
    async def submit(self, task: TaskSpec, admitter: str | None = None) -> Admitted:
        """Admit or raise ``AdmissionRejected`` / ``QueueFullDropLru`` semantics via
        ``AdmissionRejected`` (``policy_label``) or :class:`DuplicateTask`. ``admitter``,
        the admitting instance, is recorded with the task (ORCH-2603)."""

    @abc.abstractmethod
    async def dispatch(
        self, pool: str, instance: str, lease_ms: int, hint: PlacementHint | None = None
    ) -> Dispatched | Orphaned | None:
        """Pop and place the head task, orphan it, or None (nothing placeable now);
        ``hint``: the caller's placement policy picks inside the set (ORCH-2578)."""

    async def submit_dispatch(
        self, task: TaskSpec, instance: str, lease_ms: int, hint: PlacementHint | None = None
    ) -> tuple[Admitted, Dispatched | Orphaned | None]:
        """:meth:`submit`, then :meth:`dispatch` of the pool's head (whichever task that
        is) to ``instance``: the same answers as the two calls in a row (ORCH-2569). A
        backend may take both in one atomic step (valkey does) and then not ring the
        doorbell when the task it admitted is the one it dispatched."""
        admitted = await self.submit(task, instance)  # the admitter (ORCH-2603)
        return admitted, await self.dispatch(task.pool, instance, lease_ms, hint)

    async def dispatch_or_cursor(
        self, pool: str, instance: str, lease_ms: int, hint: PlacementHint | None = None
    ) -> tuple[Dispatched | Orphaned | None, str]:
        """:meth:`dispatch`, and when it placed nothing (None) the doorbell's cursor taken
        no later than the decision, to pass to :meth:`wait_bell` (ORCH-2565). A backend
        may answer both in one round trip (valkey does); this default takes two."""
        cursor = await self.bell(pool)
        return await self.dispatch(pool, instance, lease_ms, hint), cursor

    @abc.abstractmethod
    async def append(self, task_id: str, epoch: int, events: Sequence[Event]) -> int:
        """Append events (one or a coalesced batch); return the next seq.

        Raises :class:`Fenced`, :class:`TaskEnded` / :class:`Canceled`, ``KeyError``.
        A batch holds at most one terminal event, as its last element."""

    async def append_many(
        self, batches: Sequence[tuple[str, int, Sequence[Event]]]
    ) -> list[int | StateStoreError | KeyError | ValueError]:
        """:meth:`append` of several tasks' batches ``(task_id, epoch, events)``, each
        atomic on its own; per batch the next seq or the error :meth:`append` would
        raise (ORCH-2565). A backend may send them in one round trip (valkey does);
        :class:`StoreUnavailable` is raised for all of them."""
        out: list[int | StateStoreError | KeyError | ValueError] = []
        for task_id, epoch, events in batches:
            try:
                out.append(await self.append(task_id, epoch, events))
            except (StateStoreError, KeyError, ValueError) as exc:
                out.append(exc)
        return out

    @abc.abstractmethod
    async def read(self, task_id: str, after: int = -1) -> list[LoggedEvent]:
        """Every logged event with ``seq > after`` (resume after ``Last-Event-ID``)."""

    @abc.abstractmethod
    def tail(
        self, task_id: str, after: int = -1, *, poll_s: float = 1.0
    ) -> AsyncIterator[LoggedEvent]:
        """Events with ``seq > after`` as they are appended, up to the terminal one."""

    @abc.abstractmethod
    async def cancel(self, task_id: str, terminal: Event | None = None) -> CancelOutcome:
        """Cancel: remove a queued task or end a running one, appending ``terminal``
        (default :func:`canceled_terminal`) in the same step. ``KeyError`` if unknown."""

    @abc.abstractmethod
    async def requeue(self, task_id: str, epoch: int) -> None:
        """The owner gives a running task without events back to the front (ORCH-1908)."""

    @abc.abstractmethod
    async def renew(self, instance: str, leases: Mapping[str, int], lease_ms: int) -> list[str]:
        """Extend the leases ``{task_id: epoch}``; return the ids this instance lost."""

    @abc.abstractmethod
    async def reap(self, instance: str, lease_ms: int, max_requeues: int = 2) -> list[Reaped]:
        """Handle every expired lease (ORCH-2511)."""

    @abc.abstractmethod
    async def task(self, task_id: str) -> TaskView | None: ...

    # ---------------------------------------------- waiting tasks (ORCH-2560..2562)

    @abc.abstractmethod
    async def positions(self, task_ids: Sequence[str]) -> dict[str, int]:
        """The exact 0-based serving-order position (WRR across priorities, DRR across
        tenants, EDF then FIFO, as ``AdmissionQueue.position``) of each of ``task_ids``
        that is queued now, whichever instance admitted it; others are left out."""

    @abc.abstractmethod
    async def announce_queued(
        self, notes: Sequence[tuple[str, int]], interval_ms: int
    ) -> dict[str, int]:
        """For each ``(task_id, eta_ms)`` still queued, in one atomic step: its position
        now, and a ``queued`` event (:func:`queued_event`) appended to its log when
        :func:`queued_note_due` says so on the store's clock. No owner or epoch is
        needed: the step appends only while the task is queued, so no ``queued`` event
        can follow its dispatch or its end. Returns the positions of those still queued."""

    @abc.abstractmethod
    async def expire(self, task_id: str, terminal: Event) -> bool:
        """End a task that is still queued with ``terminal`` (a bounded wait ran out,
        ORCH-1965), releasing its quota, in one step; False if it was not queued
        (dispatched or ended meanwhile), then nothing changed."""

    @abc.abstractmethod
    async def bell(self, pool: str) -> str:
        """The pool's doorbell cursor now (ORCH-2518); pass it to :meth:`wait_bell`."""

    @abc.abstractmethod
    async def wait_bell(self, pool: str, cursor: str, timeout_s: float) -> str:
        """Wait until the pool's doorbell rang after ``cursor`` (a submit, a requeue, a
        freed slot, a replica change) or ``timeout_s`` passed; return the new cursor.

        A dispatcher takes the cursor *before* a ``dispatch`` that returned None and
        waits on it, so no ring is missed and nothing polls (ORCH-2518)."""

    @abc.abstractmethod
    async def control_cursor(self, instance: str) -> str:
        """The cursor of ``instance``'s control channel now (ORCH-2540); take it before
        the instance dispatches anything, then pass it to :meth:`wait_control`."""

    @abc.abstractmethod
    async def wait_control(
        self, instance: str, cursor: str, timeout_s: float
    ) -> tuple[str, list[Control]]:
        """The control messages for ``instance`` after ``cursor`` (waiting up to
        ``timeout_s`` for one) and the new cursor. :meth:`cancel` of a running task
        sends ``Control("cancel", task_id)`` to its owner in the same atomic step."""

    @abc.abstractmethod
    async def heartbeat(self, instance: str, ttl_ms: int) -> None:
        """``instance`` is alive for ``ttl_ms`` more (store clock; ORCH-2543)."""

    @abc.abstractmethod
    async def instances(self) -> list[InstanceView]:
        """The instances whose last heartbeat has not expired, by id."""

    @abc.abstractmethod
    async def busy(self, pool: str) -> dict[str, int]:
        """Reserved slots per replica (for reconciliation and tests)."""

    @abc.abstractmethod
    async def session_pin(self, session: str) -> tuple[str, str] | None:
        """``(set_key, replica_id)`` a session is pinned to, if any."""

    # ---------------------------------------------- placement on a store (ORCH-2572..2577)

    @abc.abstractmethod
    async def move(self, task_id: str, epoch: int, replica_id: str) -> bool:
        """Move a running task's slot reservation to ``replica_id`` (ORCH-2574), in one
        step: only under the task's current ``epoch``, before its first event since the
        dispatch, to a Ready replica of its set with a free slot; its session's last
        replica follows. False (nothing changed) otherwise. Raises :class:`Fenced`,
        :class:`TaskEnded` / :class:`Canceled`, ``KeyError`` as :meth:`append` does."""

    # ---------------------------------------------- hard preemption on a store (ORCH-2579)

    @abc.abstractmethod
    async def head(self, pool: str) -> tuple[Priority, str | None] | None:
        """The priority and the pinned replica set (its pin, else its session's set) of
        the task :meth:`dispatch` would take next in ``pool``; None when none is queued."""

    @abc.abstractmethod
    async def preempt(
        self, pool: str, instance: str, replicas: Sequence[str], ttl_ms: int
    ) -> Preemption | None:
        """Choose, in one step, the run to interrupt for ``pool``'s head (ORCH-2597):
        of a strictly lower priority, on one of ``replicas`` and the head's pinned set,
        owned by ``instance`` (preferred) or a live instance, the highest epoch; the
        owner, when not ``instance``, gets ``Control("preempt", task, pool)``. None when
        nothing is queued, nothing is eligible, or the head got a victim < ``ttl_ms`` ago."""

    @abc.abstractmethod
    async def queued(self, pool: str) -> list[str]:
        """The ids of every task queued in ``pool``, whoever admitted it, sorted
        (ORCH-2600)."""

    @abc.abstractmethod
    async def unattended(self, pool: str) -> list[str]:
        """The ids of the tasks queued in ``pool`` that no live instance admitted (no
        admitter recorded, or its heartbeat expired), sorted (ORCH-2603)."""

    # ---------------------------------------------- pool drains (ORCH-2585..2590)

    @abc.abstractmethod
    async def drain_pool(self, pool: str, deadline_ms: int) -> PoolDrain:
        """Drain ``pool`` from now on with the deadline ``now + deadline_ms`` (store
        clock), and tell every live instance (``Control("drain", "", pool)``) in the same
        step; a pool already drained keeps its first deadline and nothing is sent. From
        then on ``submit`` refuses the pool (:func:`draining_refusal`) and ``dispatch``
        places none of its tasks. The answer lists the pool's tasks queued or running at
        this step (ORCH-2609)."""

    @abc.abstractmethod
    async def undrain_pool(self, pool: str) -> bool:
        """Bring ``pool`` back (a reload): clear its drain, tell every live instance
        (``Control("undrain", "", pool)``) and ring its doorbell; False (and nothing
        sent) when it was not drained."""

    @abc.abstractmethod
    async def drains(self) -> list[PoolDrain]:
        """Every drained pool, by id, with the time left to its deadline."""

    @abc.abstractmethod
    async def end_queued(self, pool: str, terminal: Event) -> list[str]:
        """End every task still queued in ``pool`` with ``terminal`` in one step (quota
        released, one terminal each); their ids. Running and ended tasks stay as they are."""


def load_state_store_class(backend: str) -> type[StateStore]:
    """The plugin class registered under ``backend`` (ORCH-2501)."""
    matches = entry_points(group=STATE_STORE_ENTRY_POINT_GROUP, name=backend)
    if not matches:
        known = sorted(ep.name for ep in entry_points(group=STATE_STORE_ENTRY_POINT_GROUP))
        raise UnknownStateStore(
            f"no state store {backend!r} is installed (known: {', '.join(known) or 'none'})"
        )
    cls = next(iter(matches)).load()
    if not (isinstance(cls, type) and issubclass(cls, StateStore)):
        raise UnknownStateStore(f"state store {backend!r} is not a StateStore subclass")
    return cls
