"""Reload a pool to another model as one action (ORCH-POOL-3019).

New replicas start and pass the readiness gate while the old ones keep
serving; then placement switches (new ``ready``, old ``draining``), the
``drain`` callback runs and the old engines stop. Any failure before the
switch stops the new engines and raises :class:`ReloadError`: the old
replicas were never touched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec
from llama_orch.core.adapter_api import AdapterLoadError
from llama_orch.core.replica import ReplicaState

from .errors import ProvisionError, ReloadError, VerificationError

if TYPE_CHECKING:
    from .pool import Drain, PoolManager

__all__ = ["reload_pool"]

log = logging.getLogger("llama_orch.pool_managerd")


async def reload_pool(
    pm: PoolManager,
    pool_id: str,
    model_ref: str,
    *,
    expected_digest: str | None = None,
    drain: Drain | None = None,
) -> list[ReplicaState]:
    async with pm._lock(pool_id):
        if pm._stopping:
            raise ReloadError("the pool manager is stopping")
        new_pool = msgspec.structs.replace(pm._pools[pool_id], model=model_ref)
        try:
            prep = await pm._prepare(new_pool)
            if expected_digest is not None and prep.digest != expected_digest:
                raise VerificationError(
                    f"model {model_ref} has sha256 {prep.digest}, expected {expected_digest}"
                )
        except (AdapterLoadError, ProvisionError) as exc:
            pm.counters.reload_rollbacks += 1
            raise ReloadError(
                f"reload of pool {pool_id} to {model_ref} refused, the current replicas "
                f"keep serving: {exc}",
                verification=True,
            ) from exc
        pm._generation[pool_id] += 1
        gen = pm._generation[pool_id]
        old = [r for r in pm._replicas.values() if r.state.pool_id == pool_id]
        new = [
            pm._add_replica(new_pool, f"{pool_id}-g{gen}-r{n}") for n in range(new_pool.replicas)
        ]
        for rep in new:
            rep.retired = True  # not supervised until the switch
            pm._emit(rep.state)
        launched = await asyncio.gather(*(pm._launch(rep, prep) for rep in new))
        errors = [err for _, err in launched if err]
        if errors:
            for rep, (engine, _) in zip(new, launched, strict=True):
                if engine is not None:
                    await engine.stop()
                    pm._forget(engine)
                pm._set(rep, status="stopped", last_error=f"reload rolled back: {errors[0]}")
                del pm._replicas[rep.state.replica_id]
            pm.counters.reload_rollbacks += 1
            raise ReloadError(
                f"reload of pool {pool_id} to {model_ref} rolled back, the current "
                f"replicas keep serving: {errors[0]}"
            )
        for rep, (engine, _) in zip(new, launched, strict=True):
            rep.retired = False
            rep.settled.set()
            pm._supervise_start(rep, prep, launched=engine)
        pm._pools[pool_id] = new_pool
        pm._prepared[pool_id] = prep
        pm.counters.reloads += 1
        for rep in old:
            rep.retired = True
            if rep.state.status not in ("failed", "stopped"):
                pm._set(rep, status="draining", backoff_ms=0)
        if drain is not None:
            try:
                await drain([r.state.replica_id for r in old])
            except Exception:
                log.exception("drain callback of the reload of pool %s failed", pool_id)
        await pm._retire(old)
        return [r.state for r in new]
