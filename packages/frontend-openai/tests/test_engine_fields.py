"""Engine fields, embeddings and api-labelled counters on the mock engine (fast;
the real-engine proof is in test_real_llamacpp.py): a pool whose adapter does not
declare a capability gets the 400 naming the field (ORCH-9202); embeddings hold a
slot and are refused with the retry contract when none is free (ORCH-9212);
admission counters carry ``api`` (ORCH-9220)."""

from __future__ import annotations

import asyncio

import anthropic
import httpx
import openai
import pytest

CHAT = [{"role": "user", "content": "hello there"}]


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_unsupported_engine_fields_are_refused_by_name(start_daemon, config, key):
    """ORCH-9202, ORCH-9211: the mock adapter declares neither json_schema, logprobs nor
    embed: each request gets a 400 naming the field, nothing is enqueued, and the
    refusals and admissions are counted by api (ORCH-9220)."""
    d = await start_daemon(config())
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    cases = [
        ({"response_format": schema}, "response_format"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: invalid anyway
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),  # OpenAI's bound
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="mock", messages=CHAT, max_tokens=2, **extra)
        assert info.value.body["param"] == param, (extra, info.value.body)  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(model="mock", prompt="a", max_tokens=2, logprobs=0)
    assert info.value.body["param"] == "logprobs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        await client.embeddings.create(model="mock", input="hi")
    assert info.value.body["param"] == "model"  # type: ignore[index]
    assert info.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    assert len(d.orch.tasks) == 0  # nothing enqueued

    # a text response_format is plain generation
    done = await client.chat.completions.create(
        model="mock", messages=CHAT, max_tokens=2, response_format={"type": "text"}
    )
    assert done.choices[0].logprobs is None
    await client.close()
    claude = anthropic.AsyncAnthropic(base_url=d.url, api_key=key)
    await claude.messages.create(model="mock", max_tokens=2, messages=CHAT)  # type: ignore[arg-type]
    await claude.close()
    async with httpx.AsyncClient(base_url=d.url) as http:
        r = await http.post(
            "/v1/tasks", json={"prompt": "hi", "max_tokens": 2},
            headers={"Authorization": f"Bearer {key}"},
        )  # fmt: skip
        assert r.status_code == 202, r.text
    text = d.orch.metrics.render().decode()
    assert _metric(text, "tasks_rejected_total", api="openai") == 7
    assert _metric(text, "tasks_rejected_total", api="openai", reason="INVALID_PARAMS") == 7
    assert _metric(text, "tasks_enqueued_total", api="openai", pool_id="mock") == 1
    assert _metric(text, "tasks_enqueued_total", api="anthropic", pool_id="mock") == 1
    assert _metric(text, "tasks_enqueued_total", api="orchqueue", pool_id="mock") == 1


async def test_embeddings_hold_a_slot_and_retry_when_none_is_free(start_daemon, config, key):
    """ORCH-9210, ORCH-9212, ORCH-9213 with the SDK: vectors in input order (base64 as
    the SDK asks by default, float on request), usage from the engine's count; with
    the only slot busy the request is refused with retry-after-ms, counted; once the
    slot frees, the SDK's own retry succeeds."""
    d = await start_daemon(
        config(adapter_options={"embeddings": True, "token_delay_ms": 20}, slots=1)
    )
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    emb = await client.embeddings.create(model="mock", input=["red", "blue", "red"])
    vecs = [e.embedding for e in emb.data]
    assert [e.index for e in emb.data] == [0, 1, 2] and len(vecs[0]) == 8
    assert vecs[0] == pytest.approx(vecs[2]) and vecs[0] != pytest.approx(vecs[1])
    assert emb.usage.prompt_tokens > 0 and emb.model == "mock"
    floats = await client.embeddings.create(model="mock", input="red", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vecs[0], abs=1e-6)  # float32 round trip
    for bad, param in ((["a", ""], "input[1]"), ([[1, 2]], "input[0]"), ([], "input")):
        with pytest.raises(openai.BadRequestError) as info:
            await client.embeddings.create(model="mock", input=bad)  # type: ignore[arg-type]
        assert info.value.body["param"] == param  # type: ignore[index]

    # the only slot is busy with a task: the embedding request must wait its turn
    stream = await client.chat.completions.create(
        model="mock", messages=CHAT, max_tokens=30, stream=True
    )
    async with stream:
        async for _ in stream:  # the task holds the slot once it streams
            break
        with pytest.raises(openai.RateLimitError) as info:
            await client.embeddings.create(model="mock", input="green")
        headers = info.value.response.headers
        assert int(headers["retry-after-ms"]) > 0 and headers["x-should-retry"] == "true"
        retrying = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=5)
        late = asyncio.create_task(retrying.embeddings.create(model="mock", input="green"))
        async for _ in stream:
            pass
    assert len((await late).data) == 1  # the SDK's own retry found the slot free
    await retrying.close()
    await client.close()
    text = d.orch.metrics.render().decode()
    assert _metric(text, "embeddings_total", api="openai", pool_id="mock") == 3
    assert _metric(text, "tasks_rejected_total", api="openai", reason="ADMISSION_REJECT") >= 1
    assert all(r.busy == 0 for r in d.orch.pools["mock"].replicas.values())


async def test_an_embedding_only_engine_is_self_tested_by_embedding(start_daemon, config, key):
    """ORCH-9283: an engine that declares embed_only (vLLM's pooling runner; here the
    mock) passes its self-tests by embedding, serves /v1/embeddings, and every
    generation request on it is refused with 400 naming `model`, nothing enqueued."""
    d = await start_daemon(config(adapter_options={"embed_only": True}))
    (report,) = d.orch.self_tests.reports.values()
    assert report.passed and [c.detail for c in report.checks][1] == "embedded (8 dimensions)"
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    assert len((await client.embeddings.create(model="mock", input=["a", "b"])).data) == 2
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="mock", messages=CHAT, max_tokens=2)  # type: ignore[arg-type]
    assert err.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="mock", input="hi")
    assert err.value.body["param"] == "model"  # type: ignore[index]
    await client.close()
    claude = anthropic.AsyncAnthropic(base_url=d.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.create(model="mock", max_tokens=2, messages=CHAT)  # type: ignore[arg-type]
    await claude.close()
    assert not d.orch.tasks._tasks
