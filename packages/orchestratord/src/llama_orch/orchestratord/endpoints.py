"""Replicas given as ``endpoints`` in config: engines orchestratord did not start.

Each endpoint is probed through its adapter until Ready (health, then props),
then reported to the pool like a pool-manager snapshot (ORCH-POOL-3013).
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
                _log.info("endpoint replica %s ready at %s", replica_id, safe_url(url))
                return
            detail = health.detail
            await asyncio.sleep(poll_s)
    except OrchError as exc:
        detail = exc.message
    await adapter.aclose()
    pool.update(
        msgspec.structs.replace(base, status="failed", last_error=detail or "not ready in time")
    )
