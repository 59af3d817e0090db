"""The facade on a real vLLM (CPU, SmolLM2-135M) through the vllm-http adapter,
driven by the unmodified ``openai`` SDK: completions, and chat through the chat
template vLLM renders (ORCH-9230)."""

from __future__ import annotations

import asyncio
import json
import time

import msgspec
import openai
import pytest
from llama_orch.core.config import Config
from llama_orch.orchestratord.auth import hash_key

pytestmark = pytest.mark.real_engine


def _config(url: str, key: str) -> Config:
    return msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {
                "enabled": True,
                "keys": [{"id": "t", "role": "tenant", "tenant": "acme", "hash": hash_key(key)}],
            },
            "allow_cpu_inference": True,
            "pools": [
                {
                    "id": "smol",
                    "engine": "vllm-http",
                    "model": "smollm2-135m-instruct",
                    "endpoints": [url],
                    "adapter_options": {"slots": 4},
                }
            ],
        },
        Config,
    )


async def test_completions_and_disconnect_on_real_vllm(vllm_server, start_daemon, key):
    """ORCH-9122, ORCH-9230, ORCH-9231, ORCH-9113 on vLLM: completions and chat, stream
    and not, a JSON schema and logprobs; no embeddings from a generating vLLM (ORCH-9282);
    closing the SDK stream mid-way cancels the task and vLLM stops generating
    within 2 s."""
    d = await start_daemon(_config(vllm_server.base_url, key))
    assert d.orch.pools["smol"].ready_replicas()
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    try:  # closed on failure too: a leaked client fails a later test (unraisable warning)
        assert [m.id async for m in client.models.list()] == ["smol"]
        # ORCH-9282: a generating vLLM serves no embeddings: the 400 names `model`
        with pytest.raises(openai.BadRequestError) as err:
            await client.embeddings.create(model="smol", input="hi")
        assert err.value.body["param"] == "model"  # type: ignore[index]
        done = await client.completions.create(
            model="smol", prompt="The capital of France is", max_tokens=8, temperature=0, seed=42
        )
        assert done.choices[0].text and done.usage is not None
        assert done.usage.completion_tokens > 0
        streamed = "".join(
            [
                c.choices[0].text
                async for c in await client.completions.create(
                    model="smol", prompt="The capital of France is", max_tokens=8, temperature=0,
                    seed=42, stream=True,
                )
                if c.choices
            ]
        )  # fmt: skip
        assert streamed == done.choices[0].text

        # ORCH-9230: chat on a vLLM pool, the prompt rendered by vLLM's own template
        ask = [{"role": "user", "content": "Name three colours."}]
        raw = await client.chat.completions.with_raw_response.create(
            model="smol",
            messages=ask,
            max_tokens=8,
            temperature=0,
            seed=1,  # type: ignore[arg-type]
        )
        chat = raw.parse()
        rec = d.orch.tasks.get(raw.headers["x-llorch-task-id"])
        assert rec is not None and "Name three colours." in rec.request.prompt
        assert rec.request.prompt.rstrip().endswith("assistant")  # the generation prompt
        assert chat.choices[0].message.content and chat.usage is not None
        assert chat.usage.prompt_tokens > 10  # template tokens counted by vLLM
        chat_streamed = "".join(
            [
                c.choices[0].delta.content or ""
                async for c in await client.chat.completions.create(
                    model="smol", messages=ask, max_tokens=8, temperature=0, seed=1,  # type: ignore[arg-type]
                    stream=True,
                )
                if c.choices
            ]
        )  # fmt: skip
        assert chat_streamed == chat.choices[0].message.content

        # ORCH-9231: vLLM's structured outputs and logprobs, through the same SDK calls
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}},
                  "required": ["ok"], "additionalProperties": False}  # fmt: skip
        held = await client.chat.completions.create(
            model="smol", messages=ask, max_tokens=24, temperature=0,  # type: ignore[arg-type]
            response_format={"type": "json_schema",
                             "json_schema": {"name": "a", "schema": schema}},
        )  # fmt: skip
        assert held.choices[0].finish_reason == "stop", held
        assert isinstance(json.loads(held.choices[0].message.content or "")["ok"], bool)
        lp = await client.chat.completions.create(
            model="smol", messages=ask, max_tokens=4, temperature=0, logprobs=True,  # type: ignore[arg-type]
            top_logprobs=2,
        )  # fmt: skip
        content = lp.choices[0].logprobs.content  # type: ignore[union-attr]
        # one entry per engine token (vLLM may send several in one chunk); usage counts
        # the engine's tokens too, not the chunks (ORCH-9250)
        assert lp.choices[0].finish_reason == "length" and len(content) == 4  # type: ignore[arg-type]
        assert lp.usage is not None and lp.usage.completion_tokens == 4
        assert "".join(t.token for t in content) == lp.choices[0].message.content  # type: ignore[union-attr]
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)  # type: ignore[union-attr]

        metric = "vllm:generation_tokens_total"
        stream = await client.completions.create(
            # Greedy counting never reaches EOS within 400 tokens; a sampled story did once
            # within 5 chunks (the task then ended `completed` before the close).
            model="smol", prompt="1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", max_tokens=400,
            temperature=0, stream=True,
        )  # fmt: skip
        async with stream:
            tid = stream.response.headers["x-llorch-task-id"]
            n = 0
            async for _ in stream:
                n += 1
                if n == 5:
                    break
        closed = time.monotonic()
        while await asyncio.to_thread(vllm_server.metric, "vllm:num_requests_running") > 0:
            assert time.monotonic() - closed < 2.0
            await asyncio.sleep(0.05)
        rec = d.orch.tasks.get(tid)
        assert rec is not None and rec.state == "canceled" and rec.tokens_out < 400
        frozen = await asyncio.to_thread(vllm_server.metric, metric)
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(vllm_server.metric, metric) == frozen
    finally:
        await client.close()
