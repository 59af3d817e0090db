"""vllm-http against the real vLLM beyond the shared suite (ORCH-4061)."""

from __future__ import annotations

import asyncio

import pytest
from llama_orch.adapters.vllm_http import VllmHttpAdapter
from llama_orch.core.adapter_api import AdapterTarget, GenerateRequest, TokenChunk

pytestmark = pytest.mark.real_engine


async def test_vllm_cancel_freezes_generation_tokens_total(vllm_server) -> None:  # type: ignore[no-untyped-def]
    """ORCH-4061: after the adapter drops the stream, vLLM's own counter
    ``vllm:generation_tokens_total`` stops growing, well below max_tokens."""
    adapter = VllmHttpAdapter(
        AdapterTarget(replica_id="v", base_url=vllm_server.base_url, options={"slots": 4})
    )
    metric = "vllm:generation_tokens_total"
    try:
        before = await asyncio.to_thread(vllm_server.metric, metric)
        req = GenerateRequest(
            task_id="cancel-1",
            prompt="Write a very long story about a dragon and a lighthouse.",
            max_tokens=400,
            seed=3,
            temperature=0.8,
        )
        received = 0
        it = adapter.generate(req)
        async for ev in it:
            assert isinstance(ev, TokenChunk)
            received += ev.n_tokens
            if received >= 10:
                break
        await it.aclose()
        # vLLM reports the running request until it processed the abort.
        for _ in range(200):
            running = await asyncio.to_thread(vllm_server.metric, "vllm:num_requests_running")
            if running == 0:
                break
            await asyncio.sleep(0.05)  # polling: the engine offers no event
        assert running == 0
        c1 = await asyncio.to_thread(vllm_server.metric, metric)
        await asyncio.sleep(1.5)
        c2 = await asyncio.to_thread(vllm_server.metric, metric)
        assert c2 == c1, f"vLLM kept generating after the cancel: {c1} -> {c2}"
        assert received <= c1 - before < req.max_tokens, (before, c1, received)
    finally:
        await adapter.aclose()
