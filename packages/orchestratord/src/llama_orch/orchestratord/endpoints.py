"""Replicas given as ``endpoints`` in config: engines orchestratord did not start.

Each endpoint is probed through its adapter until Ready (health, then props),
then reported to the pool like a pool-manager snapshot (ORCH-POOL-3013). A Ready
endpoint stays under liveness probes (ORCH-1119): after ``health_probe_failures``
probes in a row without a ready answer within ``health_probe_timeout_s`` it leaves
placement and is re-admitted when its health passes again (:meth:`Pool.suspect`).
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from llama_orch.core.adapter_api import AdapterTarget, load_adapter_class
from llama_orch.core.config import PoolConfig
from llama_orch.core.errors import OrchError
from llama_orch.core.replica import ReplicaState

from .pools import Pool
from .telemetry import safe_url

__all__ = ["connect_endpoints"]

_log = logging.getLogger("llama_orch.orchestratord")


async def connect_endpoints(pool: Pool, *, poll_s: float = 0.2) -> None:
    cfg: PoolConfig = pool.config
    await asyncio.gather(
        *(_connect(pool, f"{cfg.id}-e{n}", url, poll_s) for n, url in enumerate(cfg.endpoints))
    )


async def _connect(pool: Pool, replica_id: str, url: str, poll_s: float) -> None:
    cfg = pool.config
    adapter = load_adapter_class(cfg.engine)(
        AdapterTarget(
            replica_id=replica_id,
            base_url=url,
            model_ref=cfg.model,
            model_digest=cfg.model_digest or "",
            engine_version=cfg.engine_version or "",
            options=dict(cfg.adapter_options),
        )
    )
    base = ReplicaState(
        pool_id=cfg.id,
        replica_id=replica_id,
        engine=cfg.engine,
        status="starting",
        base_url=url,
        model_ref=cfg.model,
        cpu_inference=False,
    )
    pool.update(base)
    deadline = time.monotonic() + cfg.startup_timeout_s
    detail = ""
    handed = False  # from pool.update on, the pool's (Orchestrator.shutdown closes it)
    try:
        while time.monotonic() < deadline:
            health = await adapter.health()
            if health.ready:
                props = await adapter.props()
                state = msgspec.structs.replace(
                    base,
                    status="ready",
                    model_digest=props.model_digest,
                    engine_version=props.engine_version,
                    slots=props.slots,
                    ctx=props.ctx,
                    ready_at=time.time(),
                )
                pool.update(state, adapter=adapter)
                handed = True
                _log.info("endpoint replica %s ready at %s", replica_id, safe_url(url))
                await _watch(pool, replica_id, adapter)
                return
            detail = health.detail
            await asyncio.sleep(poll_s)
    except OrchError as exc:
        detail = exc.message
    finally:
        if not handed:  # failed, timed out or cancelled while probing (ORCH-2817)
            await adapter.aclose()
    pool.update(
        msgspec.structs.replace(base, status="failed", last_error=detail or "not ready in time")
    )


async def _watch(pool: Pool, replica_id: str, adapter: object) -> None:
    """ORCH-1119: liveness of a Ready endpoint, for as long as it is this pool's replica
    with this adapter (cancelled at shutdown before the adapter closes, ORCH-2817). A
    probe that does not answer ready in time is a miss; ``health_probe_failures``
    misses in a row suspend placement."""
    cfg = pool.config
    misses = 0
    while True:
        await asyncio.sleep(cfg.health_probe_interval_s)
        replica = pool.replicas.get(replica_id)
        if replica is not None and replica.adapter is not adapter:
            return  # replaced by a newer snapshot's adapter
        if replica is None or not replica.state.ready:
            # held by its self-tests (ORCH-7050), suspended (the suspect probe
            # re-admits it) or draining
            misses = 0
            continue
        try:
            # not wait_for: on 3.11 it drops a cancel that meets the probe's own end,
            # and this loop then outlives the shutdown that cancelled it (ORCH-2817)
            async with asyncio.timeout(cfg.health_probe_timeout_s):
                health = await replica.adapter.health()
            reason = "" if health.ready else f"health not ready: {health.detail}"
        except TimeoutError:
            reason = f"health probe unanswered in {cfg.health_probe_timeout_s:g}s"
        if not reason:
            misses = 0
            continue
        misses += 1
        if misses >= cfg.health_probe_failures:
            _log.warning("endpoint replica %s leaves placement: %s", replica_id, reason)
            pool.suspect(replica_id, reason, probe_s=cfg.health_probe_interval_s)
            misses = 0
