"""Hard preemption on a state store (ORCH-2579, ORCH-2580).

Without a store, a pool's dispatcher that cannot place the head of its queue
interrupts a running task of a strictly lower priority (ORCH-1902), which goes
back to the front of its flow and resumes by continuation (ORCH-1903). With a
store the queue is the store's: a dispatch that placed nothing asks the store
for the head's priority and pinned set (``head``, one call, only with
``preemption: hard``), and the instance interrupts the most recently dispatched
lower-priority task *it runs* there. The interrupted run appends its
``metrics {preempted: true}`` and then gives the task back with the store's
``requeue`` under its epoch, so the store's WRR order hands the slot to the head.
Whichever instance dispatches the task next continues it: from its own record
when it ran it, else from the store's log (the text streamed so far and the next
token index, as a takeover does, ORCH-2530), announced by ``metrics
{preempted: false}``.

Per instance: an instance interrupts only the runs it owns; a head blocked by
another instance's lower-priority run is served when that instance's
dispatcher sees the head blocked too (every dispatcher is woken by the doorbell
that the head's submit rang).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from llama_orch.core.state_store import Dispatched, StateStoreError, StoreUnavailable, continuation

from .pools import Pool
from .tasks import TaskRecord

if TYPE_CHECKING:
    from .stored import StoreBridge

__all__ = ["needs_log", "preempt_for_head", "resume"]

_log = logging.getLogger("llama_orch.orchestratord")


def _set_key(pool: Pool, replica_id: str) -> str:
    k = pool.replicas[replica_id].state.set_key()
    return f"{k.engine}|{k.model_digest}|{k.ctx}|{k.engine_version}"


async def preempt_for_head(bridge: StoreBridge, pool: Pool) -> None:
    """A dispatch placed nothing: interrupt a run of ours below the head (ORCH-2579)."""
    preemptor = bridge.dispatcher.preemptor
    if preemptor.mode != "hard":
        return
    head = await bridge.store.head(pool.id)
    if head is None:
        return
    priority, pin = head

    def eligible(t: TaskRecord) -> bool:
        rid = t.replica_id or ""
        if rid not in pool.replicas or not bridge.runs_here(t.task_id):  # ours to stop
            return False
        return pin is None or _set_key(pool, rid) == pin

    await preemptor.interrupt_below(pool, priority, eligible, lambda: True)


def needs_log(rec: TaskRecord, d: Dispatched) -> bool:
    """Requeued before (a preemption, an unreachable replica, a reaped lease) and not
    run here since: what it streamed so far is only in the store's log (ORCH-2580)."""
    return d.requeues > 0 and rec.preemptions == 0 and not rec.takeover and not rec.text_out


async def resume(bridge: StoreBridge, pool: Pool, rec: TaskRecord, d: Dispatched) -> None:
    """Start a requeued task here from what its log holds (ORCH-2580): a continuation
    when it had started, else a first run."""
    try:
        sofar = continuation(await bridge.store.read(rec.task_id))
    except (KeyError, StoreUnavailable, StateStoreError):
        # gone, or unknown for now: give it back rather than start it blind (a second
        # `started` would break ORCH-1903)
        bridge.drop_log(rec.task_id)
        with contextlib.suppress(KeyError, StoreUnavailable, StateStoreError):
            await bridge.store.requeue(rec.task_id, d.epoch)
        return
    if sofar.ended:  # canceled meanwhile: the store holds its one terminal
        bridge.drop_log(rec.task_id)
        if not rec.terminal:
            bridge.tasks.forget(rec.task_id)
        return
    if sofar.started:
        rec.preemptions = max(1, rec.preemptions)  # the runner resumes (ORCH-1903)
        rec.tokens_out = rec.engine_tokens = sofar.next_index
        rec.text_out = [sofar.text]
        _log.info("task %s: resumed here after %d tokens elsewhere", rec.task_id, sofar.next_index)
    bridge.placement.run(bridge, pool, rec, d)
