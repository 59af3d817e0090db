"""The OpenAI and Anthropic facades on a state store (ORCH-2564): two orchestratord
instances share one real valkey-server and one engine slot, so a request answered by
one instance may run on the other; the facades read the store's event log and a
client that goes away cancels the task at the store."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import anthropic
import httpx
import msgspec
import openai
import pytest
from llama_orch.core.config import Config
from llama_orch.testing_engines.valkey import valkey_server

from .conftest import mock_config

CHAT = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_server(tmp_path_factory.mktemp("valkey")) as url:
        yield url


def _stored(url: str) -> Config:
    doc = msgspec.to_builtins(mock_config(adapter_options={"slots": 1, "token_delay_ms": 5}))
    doc["state"] = {"backend": "valkey", "url": url, "key_prefix": f"f{uuid.uuid4().hex[:8]}"}
    return msgspec.convert(doc, Config)


async def test_facades_read_and_cancel_through_the_store(start_daemon, valkey_url, key):
    cfg = _stored(valkey_url)
    a, b = await start_daemon(cfg), await start_daemon(cfg)
    store = a.orch.state.store
    # OpenAI, not streamed, on A; Anthropic on B: whichever instance runs each task,
    # the answer is assembled from the store's log
    async with openai.AsyncOpenAI(base_url=a.base, api_key=key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="mock", messages=CHAT, max_tokens=5, temperature=0, seed=7
        )
    done = raw.parse()
    assert done.usage is not None and done.usage.completion_tokens == 5
    assert done.choices[0].message.content and done.choices[0].finish_reason == "length"
    logged = await store.read(raw.headers["x-llorch-task-id"])
    assert [e.kind for e in logged].count("token") == 5 and logged[-1].kind == "end"
    async with anthropic.AsyncAnthropic(base_url=b.url, api_key=key) as claude:
        msg = await claude.messages.create(model="mock", max_tokens=4, messages=CHAT)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 4
    assert msg.content and msg.content[0].text
    # streamed on B, the client goes away after two chunks: canceled at the store
    # (whichever instance runs it), no token after the cancel, the slot free again
    body = {"model": "mock", "messages": CHAT, "max_tokens": 1500, "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream(
            "POST", b.base + "/chat/completions", json=body, headers=headers
        ) as resp:
            assert resp.status_code == 200
            tid = resp.headers["x-llorch-task-id"]
            chunks = 0
            async for line in resp.aiter_lines():
                chunks += line.startswith("data: {")
                if chunks == 2:
                    break
    async with contextlib.aclosing(store.tail(tid)) as log:
        events = [ev async for ev in log]
    assert events[-1].kind == "end" and msgspec.json.decode(events[-1].data)["reason"] == (
        "canceled"
    )
    assert sum(e.kind in ("end", "error") for e in events) == 1
    assert len(events) < 1500  # it did not run to its end
    view = await store.task(tid)
    assert view is not None and view.state == "ended"
    assert await store.busy("mock") == {}
