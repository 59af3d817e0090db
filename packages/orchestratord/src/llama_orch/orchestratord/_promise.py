"""A queue that keeps the starts it told (ORCH-2972): a task's start-by, set at its 202."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llama_orch.core.eta import Slot

if TYPE_CHECKING:
    from .pools import Pool
    from .tasks import TaskRecord
    from .workload import Workload


def keep_told_start(
    workload: Workload,
    pool: Pool,
    rec: TaskRecord,
    told: tuple[Slot | None, bool | None],
    position: int,
    now: float,
) -> tuple[Slot | None, bool | None]:
    """Give ``rec`` its start-by from the 202 just forecast (``told``, at ``position``,
    ``now``); when that moves it in its flow, forecast its 202 again at its new place
    (ORCH-2972: the start-by stays the first forecast's). Off: ``told`` unchanged."""
    margin = pool.queue.keep_told_start
    forecast = told[0]
    if margin is None or forecast is None:
        return told
    if rec.deadline is None:  # admission + m x its told start
        by = now + margin * forecast.start_ms / 1000
    else:  # its deadline - m x its told service
        by = rec.deadline - margin * (forecast.finish_ms - forecast.start_ms) / 1000
    pool.queue.promise(rec, by)
    moved = pool.queue.position(rec)
    if moved == position:
        return told
    rec.queue_position = moved
    return workload.predicted(pool, rec, now, moved)
