"""Watchdog: end stuck tasks with DECODE_TIMEOUT and free their slot (ORCH-1115).

A running task is stuck when it ran longer than ``wall_timeout_s`` since
dispatch, or saw no engine event for ``idle_timeout_s``. The watchdog
appends the terminal ``error`` first (so nothing can follow it) and then
cancels the runner, which closes the engine stream and releases the slot
exactly as an explicit cancel does.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from llama_orch.core.config import WatchdogConfig
from llama_orch.core.errors import ErrorCode

if TYPE_CHECKING:
    from .service import Orchestrator

__all__ = ["stuck_reason", "watchdog_loop"]


def stuck_reason(
    now: float, dispatched: float, last_progress: float | None, cfg: WatchdogConfig
) -> str | None:
    """Why a task running since ``dispatched`` counts as stuck at ``now``, or None."""
    if cfg.wall_timeout_s is not None and now - dispatched > cfg.wall_timeout_s:
        return f"no end within the wall timeout of {cfg.wall_timeout_s:g} s"
    idle_since = last_progress if last_progress is not None else dispatched
    if cfg.idle_timeout_s is not None and now - idle_since > cfg.idle_timeout_s:
        return f"no engine event for the idle timeout of {cfg.idle_timeout_s:g} s"
    return None


async def watchdog_loop(orch: Orchestrator, cfg: WatchdogConfig) -> None:
    limits = [x for x in (cfg.wall_timeout_s, cfg.idle_timeout_s) if x is not None]
    period = min(1.0, max(0.01, min(limits) / 4))
    while True:
        await asyncio.sleep(period)  # a periodic scan: there is no event to await
        now = time.monotonic()
        for rec in orch.tasks.active():
            if rec.state != "running" or rec.dispatched is None:
                continue
            reason = stuck_reason(now, rec.dispatched, rec.last_progress, cfg)
            if reason is None:
                continue
            # ORCH-2411: the one end path; the cancelled runner's release frees the slot
            orch.end(rec, orch.error_event(rec, reason, ErrorCode.DECODE_TIMEOUT))
