"""The readiness gate of one replica (ORCH-POOL-3004).

A replica is Ready only when its engine answers ``/health`` with 200 **and**
a one-token decode went through the very adapter orchestratord will use (an
engine that only embeds, ``Capability.EMBED_ONLY``: one embedding, ORCH-9283).
``/health`` alone is not enough: llama-server reports healthy before a
broken model, a wrong chat template or a mismatched adapter would show up.
"""

from __future__ import annotations

import asyncio

from llama_orch.core.adapter_api import (
    AdapterTarget,
    Capability,
    EngineProps,
    Finished,
    GenerateRequest,
    TokenChunk,
    WorkerAdapter,
)

from .engine import EngineProcess, wait_healthy
from .errors import ReplicaStartError

__all__ = ["READINESS_PROMPT", "readiness_gate"]

READINESS_PROMPT = "Hello"


async def _one_token(adapter: WorkerAdapter, replica_id: str) -> None:
    req = GenerateRequest(
        task_id=f"readiness-{replica_id}", prompt=READINESS_PROMPT, max_tokens=1, seed=0
    )
    produced = 0
    finished: Finished | None = None
    async for event in adapter.generate(req):
        if isinstance(event, TokenChunk):
            produced += event.n_tokens
        elif isinstance(event, Finished):
            finished = event
    if finished is None:
        raise ReplicaStartError("readiness decode ended without a Finished event")
    if max(produced, finished.tokens_generated) < 1:
        raise ReplicaStartError(f"readiness decode produced no token ({finished.reason})")


async def _one_vector(adapter: WorkerAdapter) -> None:
    """The decode of an engine that only embeds (ORCH-9283): one vector comes back."""
    out = await adapter.embed([READINESS_PROMPT])
    if len(out.vectors) != 1 or not out.vectors[0]:
        raise ReplicaStartError(f"readiness embed answered {len(out.vectors)} vectors for 1")


async def readiness_gate(
    engine: EngineProcess,
    adapter_cls: type[WorkerAdapter],
    target: AdapterTarget,
    *,
    timeout: float,
    health_path: str = "/health",
) -> EngineProps:
    """Wait for health, decode one token, return the engine's props.

    Until ``health_path`` answers 200 the engine is loading, not down, however
    it answers meanwhile (ORCH-POOL-3035): llama-server 503, Triton 400, vLLM
    and TGI refuse connections until their model is loaded. Only the process
    exiting or ``timeout`` (the pool's ``startup_timeout_s``, the grace period)
    fails the start.

    Raises :class:`ReplicaStartError` (or the adapter's ``OrchError``) when
    the engine fails, and ``TimeoutError`` when ``timeout`` runs out.
    """
    async with asyncio.timeout(timeout):
        await wait_healthy(target.base_url, engine, timeout=timeout, path=health_path)
        adapter = adapter_cls(target)
        try:
            props = await adapter.props()
            if Capability.EMBED_ONLY in props.capabilities:
                await _one_vector(adapter)  # an embedding engine generates nothing
            else:
                await _one_token(adapter, target.replica_id)
            return props
        finally:
            await adapter.aclose()
