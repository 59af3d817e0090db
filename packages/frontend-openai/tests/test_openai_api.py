"""The OpenAI facade driven by the unmodified ``openai`` SDK, on the mock engine
(fast; the real-engine proofs are in test_real_llamacpp.py)."""

from __future__ import annotations

import asyncio
import logging

import httpx
import openai
import pytest

CHAT = [{"role": "user", "content": "hello there"}]


async def test_frontend_is_mounted_through_its_entry_point():
    """ORCH-9100: discovered by entry point, a Frontend subclass."""
    from llama_orch.frontends.openai import OpenAIFrontend
    from llama_orch.orchestratord.frontends import load_frontends

    assert any(isinstance(f, OpenAIFrontend) for f in load_frontends())


async def test_chat_non_stream_and_stream_async(start_daemon, config, key):
    """ORCH-9120, ORCH-9121, ORCH-9110: one task per request, usage counted, task id header."""
    d = await start_daemon(config())
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    raw = await client.chat.completions.with_raw_response.create(
        model="mock", messages=CHAT, max_tokens=5, temperature=0, seed=7
    )
    done = raw.parse()
    tid = raw.headers["x-llorch-task-id"]
    rec = d.orch.tasks.get(tid)
    assert rec is not None and rec.state == "completed" and rec.api == "openai"
    assert rec.tenant == "acme" and rec.request.seed == 7 and rec.request.max_tokens == 5
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 5
    assert done.usage.prompt_tokens == rec.prompt_tokens > 0
    assert done.choices[0].message.content

    stream = await client.chat.completions.create(
        model="mock", messages=CHAT, max_tokens=5, temperature=0, seed=7, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == done.choices[0].message.content  # same seed, same tokens
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    await client.close()


async def test_chat_completions_and_models_sync(start_daemon, config, key):
    """The sync client too, in a thread (ORCH-9120, ORCH-9122, ORCH-9123)."""
    d = await start_daemon(config())
    await asyncio.to_thread(_sync_calls, d.base, key)


def _sync_calls(base: str, key: str) -> None:
    with openai.OpenAI(base_url=base, api_key=key) as client:
        assert [m.id for m in client.models.list()] == ["mock"]
        done = client.chat.completions.create(model="mock-model", messages=CHAT, max_tokens=3)
        assert done.usage is not None and done.usage.completion_tokens == 3
        comp = client.completions.create(model="mock", prompt="once upon", max_tokens=4)
        assert comp.object == "text_completion" and comp.choices[0].text
        assert comp.usage is not None and comp.usage.completion_tokens == 4
        pieces = list(
            client.completions.create(model="mock", prompt="a", max_tokens=4, stream=True)
        )
        assert "".join(p.choices[0].text for p in pieces if p.choices)
        assert pieces[-1].choices[0].finish_reason == "length"


async def test_llorch_headers_and_extras_reach_the_task(start_daemon, config, key):
    """ORCH-9110: priority, deadline, session from headers, else body extras, else metadata."""
    d = await start_daemon(config())
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    sid = "0b6f3c52-5c0e-4a57-9b7e-3d2a1f0e9c11"
    raw = await client.chat.completions.with_raw_response.create(
        model="mock", messages=CHAT, max_tokens=2,
        extra_headers={"X-Llorch-Priority": "batch", "X-Llorch-Deadline-Ms": "60000"},
        extra_body={"session_id": sid},
    )  # fmt: skip
    rec = d.orch.tasks.get(raw.headers["x-llorch-task-id"])
    assert rec is not None and rec.priority == "batch" and rec.session_id == sid
    assert rec.deadline is not None
    raw = await client.chat.completions.with_raw_response.create(
        model="mock", messages=CHAT, max_tokens=2, metadata={"llorch_priority": "batch"}
    )
    rec = d.orch.tasks.get(raw.headers["x-llorch-task-id"])
    assert rec is not None and rec.priority == "batch" and rec.session_id is None
    await client.close()


def _rejected(d) -> float:
    text = d.orch.metrics.render().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tasks_rejected_total{")
    )


@pytest.mark.parametrize(
    ("kwargs", "status", "param", "code"),
    [
        ({"model": "no-such-model"}, 404, "model", "model_not_found"),
        ({"n": 2}, 400, "n", "invalid_value"),
        ({"max_tokens": 5000}, 400, "max_tokens", "context_length_exceeded"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools", None),
        ({"response_format": {"type": "json_object"}}, 400, "response_format", None),
        ({"logprobs": True}, 400, "logprobs", None),
        ({"temperature": 9}, 400, "temperature", None),
    ],
)
async def test_bad_input_gets_openai_errors_nothing_enqueued_counted(
    start_daemon, config, key, kwargs, status, param, code
):
    """ORCH-9114, ORCH-9115: the API's own error shape and status, nothing enqueued,
    counted as rejected."""
    d = await start_daemon(config(adapter_options={"ctx": 1024}))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    before = _rejected(d)
    args = {"model": "mock", "messages": CHAT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(**args)
    err = info.value
    assert err.status_code == status
    assert isinstance(err.body, dict) and set(err.body) >= {"message", "type", "param", "code"}
    assert err.body["param"] == param, err.body
    if code is not None:
        assert err.body["code"] == code
    assert len(d.orch.tasks) == 0
    assert _rejected(d) == before + 1
    await client.close()


async def test_malformed_json_and_strict_unknown_field(start_daemon, config, key):
    """ORCH-9114: malformed JSON → 400; an unknown field passes unless strict mode."""
    d = await start_daemon(config())
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=d.base, headers=auth) as http:
        r = await http.post("/chat/completions", content=b'{"model": "mock", "messages": [')
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        body = {"model": "mock", "messages": CHAT, "max_tokens": 2, "frobnicate": 1}
        r = await http.post("/chat/completions", json=body)
        assert r.status_code == 200, r.text
        r = await http.post("/chat/completions", json=body, headers={"X-Llorch-Strict": "true"})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "frobnicate", r.json()
        r = await http.post("/chat/completions", json=body, headers={"Authorization": "Bearer x"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert len(d.orch.tasks) == 1


async def test_task_end_log_is_labelled_by_api(start_daemon, config, key, caplog):
    """ORCH-9103: the one task-end log line says which API the task came through."""
    caplog.set_level(logging.INFO, logger="llama_orch.orchestratord")
    d = await start_daemon(config())
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    await client.chat.completions.create(model="mock", messages=CHAT, max_tokens=2)
    await client.close()
    ends = [r for r in caplog.records if getattr(r, "job_id", None) and hasattr(r, "api")]
    assert [r.api for r in ends] == ["openai"]
