"""Queued events and bounded waits of tasks queued in a state store (ORCH-2561, ORCH-2562,
ORCH-2563).

Without a store, ``waiting.py`` forecasts the pool's local queue and appends
``queued`` events to the records. With a store the queue is the store's and a
queued task has no owner and no fencing epoch, so the store appends the
``queued`` event itself (``StateStore.announce_queued``): in one atomic step it
computes the task's exact position, applies the interval and change rule on its
own clock and appends only while the task is still queued, so no ``queued``
event can follow the dispatch, and several instances announcing the same task
write one event per interval.

Each instance announces the queued tasks it knows (those it admitted, read
the status or stream of, or adopted because no live instance admitted them:
:func:`adopt_queued`, ORCH-2601, ORCH-2604), every ``TICK_S``, with an ETA from its service-time
model, and ends those whose bounded wait ran out (queue TTL, deadline, pool
unready) through ``StateStore.expire``, which ends only a task still queued.
A task the store no longer has queued (another instance runs it or ended it)
is detached from this instance's records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import msgspec
from llama_orch.core.api import EndEvent
from llama_orch.core.config import WaitingConfig
from llama_orch.core.errors import ErrorCode
from llama_orch.core.state_store import Event, StoreUnavailable

from .ending import error_event
from .waiting import TICK_S, expiry

if TYPE_CHECKING:
    from .deadlines import DeadlineStats
    from .pools import Pool
    from .stored import StoreBridge
    from .tasks import TaskRecord, TaskState
    from .workload import Workload

__all__ = ["SWEEP_ROUNDS", "adopt_queued", "store_status", "store_tick", "store_waiting_loop"]

# heartbeat rounds (a third of a lease each) between two sweeps of unattended tasks:
# one ``unattended`` call per pool and lease (ORCH-2604)
SWEEP_ROUNDS = 3

_log = logging.getLogger("llama_orch.orchestratord")


async def _expire(
    bridge: StoreBridge,
    deadlines: DeadlineStats,
    pool: Pool,
    rec: TaskRecord,
    why: tuple[str, ErrorCode, str],
    cfg: WaitingConfig,
) -> None:
    reason, code, message = why
    terminal = error_event(rec, message, code, retry_after_ms=cfg.expired_retry_after_ms)
    if not await bridge.store.expire(rec.task_id, Event("error", msgspec.json.encode(terminal))):
        return  # dispatched or ended meanwhile: nothing changed at the store
    if bridge.ending.end(rec, terminal):  # the local record (its sink is unset while queued)
        bridge.metrics.tasks_expired.add(
            1, {"engine": pool.engine, "pool_id": pool.id, "reason": reason}
        )
        if rec.deadline is not None:
            deadlines.missed(pool.id, rec.priority)  # ORCH-1112
        _log.info(
            "task %s expired in the queue: %s", rec.task_id, message, extra={"job_id": rec.task_id}
        )


async def store_tick(
    bridge: StoreBridge, pool: Pool, workload: Workload, deadlines: DeadlineStats, now: float
) -> None:
    cfg = workload.cfg
    # a task younger than a tick is usually dispatched before anyone waits on it: it
    # costs the store no call (at thousands of admissions/s, most never wait)
    queued = [
        r
        for r in bridge.tasks.active()
        if r.pool_id == pool.id and r.state == "queued" and now - r.created >= TICK_S
    ]
    if not queued:
        return
    unready_since = None if pool.ready_replicas() else pool.unready_since
    notes: list[tuple[str, int]] = []
    for rec in queued:
        slot = None
        if unready_since is None:
            slot = workload.predicted_at(pool, rec, rec.queue_position, now)
        why = expiry(rec, now, cfg, slot.finish_ms if slot else None, unready_since)
        if why is not None:
            await _expire(bridge, deadlines, pool, rec, why, cfg)
            continue
        if slot is not None:
            eta = int(slot.start_ms)
        elif unready_since is not None:  # as waiting.tick: the time left to the unready bound
            eta = int(max(0.0, (cfg.unready_timeout_s or 0.0) - (now - unready_since)) * 1000)
        else:
            eta = rec.predicted_start_ms
        notes.append((rec.task_id, eta))
    if not notes:
        return
    interval_ms = max(1, int(cfg.queued_event_interval_s * 1000))
    positions = await bridge.store.announce_queued(notes, interval_ms)
    for tid, eta in notes:
        local = bridge.tasks.get(tid)
        if local is None or local.state != "queued":
            continue  # dispatched here during the call
        pos = positions.get(tid)
        if pos is None:
            bridge.tasks.detach(tid)  # runs on, or was ended by, another instance
        else:
            local.queue_position, local.predicted_start_ms = pos, eta


async def store_waiting_loop(
    bridge: StoreBridge, pool: Pool, workload: Workload, deadlines: DeadlineStats
) -> None:
    while True:
        await asyncio.sleep(TICK_S)  # a periodic scan: forecasts change with time itself
        try:
            await store_tick(bridge, pool, workload, deadlines, time.monotonic())
        except StoreUnavailable:
            _log.debug("waiting loop of pool %s: store unreachable", pool.id)
        except Exception:  # never let the loop die: queued tasks depend on it
            _log.exception("store waiting loop of pool %s", pool.id)


async def adopt_queued(bridge: StoreBridge) -> None:
    """Know, for waiting, every task queued at the store in this instance's pools that
    no live instance admitted and this one does not know yet (ORCH-2601, ORCH-2604), so
    that their ``queued`` events and bounded waits go on without their admitter: run at
    start, when an instance leaves the live list, and every ``SWEEP_ROUNDS`` rounds."""
    try:
        for pool in bridge.pools.values():
            for tid in await bridge.store.unattended(pool.id):
                await bridge.hydrate(tid)  # a no-op for a task already known here
    except StoreUnavailable:
        _log.debug("adoption of queued tasks: store unreachable")
    except Exception:
        _log.exception("adoption of queued tasks failed")


_end_decoder = msgspec.json.Decoder(EndEvent)


async def store_status(bridge: StoreBridge, rec: TaskRecord) -> tuple[TaskState, int | None]:
    """State and exact queue position of a task this instance's record shows queued
    (ORCH-2563): the store's, whichever instance admitted, runs or ended it."""
    tid = rec.task_id
    pos = (await bridge.store.positions([tid])).get(tid)
    if pos is not None:
        return "queued", pos
    view = await bridge.store.task(tid)
    if view is None or view.state == "queued":  # expired, or requeued after the call
        return rec.state, None
    if view.state == "running":
        return "running", None
    last = await bridge.store.read(tid, view.next_seq - 2)
    if not last or last[-1].kind == "error":
        return "failed", None
    canceled = _end_decoder.decode(last[-1].data).reason == "canceled"
    return ("canceled" if canceled else "completed"), None
