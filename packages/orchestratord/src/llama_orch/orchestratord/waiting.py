"""What a waiting client sees, and how long it can wait (ORCH-1961..1967).

One loop per pool, every quarter second: it forecasts every queued task with
the service-time model (ORCH-1957), appends a ``queued`` event to a task's
stream when its position or ETA changed (at most once per
``scheduling.waiting.queued_event_interval_s``), and ends a queued task with
a typed, retriable error when waiting any longer cannot help:

- ``deadline``: even a forecast ``deadline_margin`` too pessimistic finishes
  after the deadline → ``DEADLINE_UNMET``;
- ``queue_ttl``: queued longer than ``queue_ttl_s`` → ``ADMISSION_REJECT``;
- ``pool_unready``: the pool has had no Ready replica for
  ``unready_timeout_s`` → ``POOL_UNREADY``.

A periodic scan, not an event: the forecasts change with time itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from llama_orch.core.api import MetricsEvent, QueuedEvent
from llama_orch.core.config import WaitingConfig
from llama_orch.core.errors import ErrorCode
from llama_orch.core.eta import Slot, admits

from .forecast_pass import ToldEnds
from .tasks import TaskRecord

if TYPE_CHECKING:
    from .pools import Pool
    from .service import Orchestrator

__all__ = [
    "TICK_S",
    "announce_finish",
    "announce_queued",
    "expiry",
    "finish_far",
    "waiting_loop",
]

_log = logging.getLogger("llama_orch.orchestratord")

TICK_S = 0.25


def announce_queued(
    rec: TaskRecord,
    cfg: WaitingConfig,
    position: int | None = None,
    eta_ms: int | None = None,
    now: float | None = None,
    finish_ms: int | None = None,
) -> bool:
    """Append a ``queued`` event if the position or ETA changed (the ETA by more than
    10 % or 500 ms) and the last one is ``queued_event_interval_s`` old (ORCH-1961);
    it carries the forecast finish too (ORCH-2907)."""
    now = time.monotonic() if now is None else now
    pos = rec.queue_position if position is None else position
    eta = rec.predicted_start_ms if eta_ms is None else eta_ms
    last = rec.queued_sent_eta  # the position it was sent with is ``queue_position``
    if last is not None:
        if now - rec.queued_sent_at < cfg.queued_event_interval_s * 0.95:
            return False
        if rec.queue_position == pos and abs(last - eta) <= max(500, 0.1 * last):
            return False
    event = QueuedEvent(queue_position=pos, predicted_start_ms=eta, predicted_finish_ms=finish_ms)
    if not rec.append(event):
        return False
    rec.queued_sent_eta, rec.queued_sent_at = eta, now
    rec.queue_position = pos
    if finish_ms is not None:
        rec.finish_held = now + finish_ms / 1000
    return True


FINISH_MOVE = 0.1  # of the time left: a finish that moved less is not sent (ORCH-2907)
FINISH_MOVE_MIN_MS = 100
FINISH_FAR = 1.5  # held / forecast time left beyond which it is told at once (ORCH-2915)


def finish_far(held_left_ms: float, finish_ms: float) -> bool:
    """Whether a held time left (passed: ≤ 0) is more than 1.5x off the forecast one,
    either way, both counted at least 1 ms (ORCH-2915)."""
    held, told = max(1.0, held_left_ms), max(1.0, finish_ms)
    return max(held / told, told / held) > FINISH_FAR


def announce_finish(rec: TaskRecord, cfg: WaitingConfig, finish_ms: float, now: float) -> bool:
    """Tell a running task's client its forecast finish when it moved from the one it
    holds by more than 10 % of the time left (and 100 ms), at most once per
    ``queued_event_interval_s`` (ORCH-2907): in a ``metrics`` event once it has started,
    and before (its engine has not answered: a batch of prompts ahead of its own), in
    a ``queued`` event at position 0 once it has waited that interval since dispatch.
    A held finish far off (passed, or its time left over 1.5x off) is told at the next
    tick, whatever the move and the interval (ORCH-2915)."""
    interval = cfg.queued_event_interval_s * 0.95
    held = rec.finish_held
    far = held is not None and finish_far((held - now) * 1000, finish_ms)
    spacing = TICK_S * 0.95 if far else interval
    if rec.request.inputs or now - rec.finish_sent_at < spacing:
        return False
    started = rec.first_token is not None  # `started` came with the engine's first answer
    if not started and (rec.dispatched is None or now - rec.dispatched < interval):
        return False
    moved = abs(now + finish_ms / 1000 - held) * 1000 if held is not None else math.inf
    if not far and moved <= max(FINISH_MOVE_MIN_MS, FINISH_MOVE * finish_ms):
        return False
    told = int(finish_ms)
    event: MetricsEvent | QueuedEvent = (
        MetricsEvent(predicted_finish_ms=told)
        if started  # no event but `queued` before `started` (ORCH-1117)
        else QueuedEvent(queue_position=0, predicted_start_ms=0, predicted_finish_ms=told)
    )
    if not rec.append(event):
        return False
    rec.finish_held, rec.finish_sent_at = now + told / 1000, now
    return True


def expiry(
    rec: TaskRecord,
    now: float,
    cfg: WaitingConfig,
    finish_ms: float | None,
    unready_since: float | None,
) -> tuple[str, ErrorCode, str] | None:
    """Why a queued task must end now, or None (ORCH-1965)."""
    if unready_since is not None and cfg.unready_timeout_s is not None:
        if now - unready_since >= cfg.unready_timeout_s:
            return (
                "pool_unready",
                ErrorCode.POOL_UNREADY,
                f"the pool has had no Ready replica for {cfg.unready_timeout_s:g} s",
            )
    if cfg.queue_ttl_s is not None and now - rec.created >= cfg.queue_ttl_s:
        return (
            "queue_ttl",
            ErrorCode.ADMISSION_REJECT,
            f"queued longer than {cfg.queue_ttl_s:g} s",
        )
    if rec.deadline is not None:
        left_ms = (rec.deadline - now) * 1000
        if left_ms <= 0 or (
            finish_ms is not None and not admits(finish_ms, left_ms, cfg.deadline_margin)
        ):
            what = (
                "passed"
                if left_ms <= 0
                else f"cannot be met (forecast finish in {finish_ms:.0f} ms)"
            )
            return ("deadline", ErrorCode.DEADLINE_UNMET, f"deadline {what} while queued")
    return None


def _expire(
    orch: Orchestrator, pool: Pool, rec: TaskRecord, why: tuple[str, ErrorCode, str]
) -> None:
    reason, code, message = why
    cfg = orch.workload.cfg
    terminal = orch.error_event(rec, message, code, retry_after_ms=cfg.expired_retry_after_ms)
    if orch.end(rec, terminal):  # ORCH-2411
        orch.metrics.tasks_expired.add(
            1, {"engine": pool.engine, "pool_id": pool.id, "reason": reason}
        )
        if rec.deadline is not None:
            orch.deadlines.missed(pool.id, rec.priority)  # ORCH-1112
        _log.info(
            "task %s expired in the queue: %s", rec.task_id, message, extra={"job_id": rec.task_id}
        )


def tick(orch: Orchestrator, pool: Pool, now: float, unready_since: float | None) -> None:
    cfg = orch.workload.cfg
    told = ToldEnds(now)  # each tenant's earliest finish, for its cap's refusals (ORCH-1129)

    def queued(rec: TaskRecord, pos: int, slot: Slot) -> None:
        why = expiry(rec, now, cfg, slot.finish_ms, None)
        if why is not None:
            _expire(orch, pool, rec, why)
        else:
            announce_queued(rec, cfg, pos, int(slot.start_ms), now, int(slot.finish_ms))
            told.add(rec.tenant, slot.finish_ms)

    # the queued tasks one at a time as the simulation reaches them (ORCH-2742)
    t0 = time.perf_counter()
    running = None if unready_since is not None else orch.workload.forecasts(pool, now, queued)
    told.cost_s = time.perf_counter() - t0
    pool.told_ends = None if running is None else told
    if running is not None:
        for rec, finish_ms in running:  # ORCH-2907: the finish follows the work
            told.add(rec.tenant, finish_ms)
            if rec.state == "running":
                announce_finish(rec, cfg, finish_ms, now)
        return
    for pos, rec in enumerate(list(pool.queue)):
        why = expiry(rec, now, cfg, None, unready_since)
        if why is not None:
            _expire(orch, pool, rec, why)
        elif unready_since is not None:
            # no replica to forecast from: the position, and an ETA of the time
            # until the unready bound (a client should not plan on less)
            bound = cfg.unready_timeout_s or 0.0
            announce_queued(rec, cfg, pos, int(max(0.0, bound - (now - unready_since)) * 1000), now)


async def waiting_loop(orch: Orchestrator, pool: Pool) -> None:
    while True:
        await asyncio.sleep(TICK_S)  # a periodic scan: forecasts change with time itself
        now = time.monotonic()
        # noted by the pool at each readiness change: a Ready spell shorter than a tick
        # still restarts the clock (found by the remote kill test)
        unready_since = None if pool.ready_replicas() else pool.unready_since
        if len(pool.queue) or orch.workload.running_on(pool.id):  # ORCH-2907: running too
            try:
                tick(orch, pool, now, unready_since)
            except Exception:  # never let the loop die: queued tasks depend on it
                _log.exception("waiting loop of pool %s", pool.id)
