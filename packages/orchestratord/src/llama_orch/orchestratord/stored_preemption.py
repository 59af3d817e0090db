"""Hard preemption on a state store (ORCH-2579, ORCH-2580).

Without a store, a pool's dispatcher that cannot place the head of its queue
interrupts a running task of a strictly lower priority (ORCH-1902), which goes
back to the front of its flow and resumes by continuation (ORCH-1903). With a
store the queue is the store's: a dispatch that placed nothing asks the store
to choose a lower-priority run for the head (``preempt``, one call, only with
``preemption: hard``), and the owner of that run interrupts it. The interrupted
run appends its ``metrics {preempted: true}`` and then gives the task back with the store's
``requeue`` under its epoch, so the store's WRR order hands the slot to the head.
Whichever instance dispatches the task next continues it: from its own record
when it ran it, else from the store's log (the text streamed so far and the next
token index, as a takeover does, ORCH-2530), announced by ``metrics
{preempted: false}``.

Across instances (ORCH-2597, ORCH-2598): the victim is chosen by the store,
which knows every instance's runs, in the same call that asks for the head
(``preempt``; one call, as ``head`` was): the caller's own newest lower-priority
run if it has one, else the newest of another live instance, whose owner gets
``Control("preempt")`` on its control channel and interrupts it here
(:func:`preempt_here`). The store records the choice for the head, so several
instances that see the same blocked head interrupt one run, not one each.
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

__all__ = ["needs_log", "preempt_for_head", "preempt_here", "resume"]

_log = logging.getLogger("llama_orch.orchestratord")


async def preempt_for_head(bridge: StoreBridge, pool: Pool) -> None:
    """A dispatch placed nothing: the store chooses the run to interrupt for the head
    among every live instance's runs (ORCH-2597, ORCH-2598); one of ours is
    interrupted here, another instance's owner was told on its control channel."""
    preemptor = bridge.dispatcher.preemptor
    if preemptor.mode != "hard" or preemptor.in_flight(pool):
        return
    replicas = await preemptor.interruptible(pool)
    if not replicas:
        return
    got = await bridge.store.preempt(pool.id, bridge.instance, replicas, bridge.options.lease_ms)
    if got is None:
        return
    if got.owner == bridge.instance:
        await preempt_here(bridge, pool, got.task_id)
    else:
        _log.info("task %s on instance %s: preemption asked", got.task_id, got.owner)


async def preempt_here(bridge: StoreBridge, pool: Pool, task_id: str) -> None:
    """Interrupt our run of ``task_id`` that the store chose (ORCH-2598); nothing when
    it no longer runs here."""
    rec = bridge.tasks.get(task_id)
    if rec is None or not bridge.runs_here(task_id) or rec.pool_id != pool.id:
        return
    if await bridge.dispatcher.preemptor.interrupt(pool, rec):
        _log.info("task %s: preempted for the head of pool %s", task_id, pool.id)


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
