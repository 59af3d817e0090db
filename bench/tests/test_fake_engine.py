"""Wire-format smoke test of bench/fake_engine.py (not in the default test paths).

uv run pytest bench/tests -q
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from llama_orch.adapters.llamacpp_http import CompletionStream
from llama_orch.core.adapter_api import Finished, TokenChunk
from llama_orch.core.sse import SSEParser

_spec = importlib.util.spec_from_file_location(
    "fake_engine", Path(__file__).resolve().parents[1] / "fake_engine.py"
)
assert _spec and _spec.loader
fake_engine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_engine)


@pytest.fixture
async def client():
    engine = fake_engine.FakeEngine(delay_ms=0, tokens=32, slots=512, n_ctx=8192, model="fm")
    async with TestClient(TestServer(fake_engine.build_app(engine))) as c:
        yield c


async def test_completion_stream_is_what_the_adapter_expects(client):
    resp = await client.post("/completion", json={"prompt": "a b", "n_predict": 5, "stream": True})
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    events = CompletionStream().feed(await resp.read())
    tokens = [e.text for e in events if isinstance(e, TokenChunk)]
    assert tokens == [" t0", " t1", " t2", " t3", " t4"]  # distinct, in order
    assert isinstance(events[-1], Finished) and events[-1].reason == "length"
    assert events[-1].tokens_generated == 5 and events[-1].prompt_tokens == 3


async def test_props_tokenize_health_metrics(client):
    props = await (await client.get("/props")).json()
    assert props["total_slots"] == 512 and props["default_generation_settings"]["n_ctx"] == 8192
    assert (await (await client.post("/tokenize", json={"content": "x y z"})).json())["tokens"] == [
        1,
        2,
        3,
        4,
    ]
    assert (await client.get("/health")).status == 200
    assert "llamacpp:tokens_predicted_total" in await (await client.get("/metrics")).text()


@pytest.mark.parametrize("chat", [False, True])
async def test_openai_streams_end_with_done(client, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"model": "m", "max_tokens": 3, "stream": True}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"})
    msgs = SSEParser().feed(await (await client.post(path, json=body)).read())
    assert msgs[-1].data == "[DONE]"
    chunks = [json.loads(m.data)["choices"][0] for m in msgs[:-1]]
    texts = [c["delta"].get("content") if chat else c["text"] for c in chunks]
    assert texts == [" t0", " t1", " t2", "" if not chat else None]
    assert chunks[-1]["finish_reason"] == "length"
