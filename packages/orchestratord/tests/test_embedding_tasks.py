"""`workload: embedding` on the task API (ORCH-1011..1013): queued like any task,
one `embed` call on its slot, one `embedding` event per input, then `end`."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config


def _mock_vector(text: str) -> list[float]:
    """The mock engine's vector for ``text`` (its SHA-256, as adapter-mock says)."""
    return [b / 255 - 0.5 for b in hashlib.sha256(text.encode()).digest()[:8]]


async def test_an_embedding_task_streams_one_vector_per_input(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-1011, ORCH-1013: admitted with its queue position, the stream is started,
    metrics, one `embedding` per input in order, end (stop, no tokens out, the
    engine's prompt count), counted in `embeddings_total{api="orchqueue"}`."""
    run = await start_orchestrator(mock_config(adapter_options={"embeddings": True}))
    texts = ["red green blue", "a cat sat", "red green blue"]
    resp = await run.submit(workload="embedding", prompt=None, inputs=texts)
    assert resp.status == 202, await resp.text()
    tid = (await resp.json())["task_id"]
    events = await run.events(tid)
    kinds = [e for _, e, _ in events]
    assert kinds == ["started", "metrics", "embedding", "embedding", "embedding", "end"], kinds
    vectors = [d for _, e, d in events if e == "embedding"]
    assert [v["index"] for v in vectors] == [0, 1, 2]
    for v, text in zip(vectors, texts, strict=True):
        assert v["vector"] == pytest.approx(_mock_vector(text))
    end = events[-1][2]
    assert end["reason"] == "stop" and end["tokens_out"] == 0 and end["tokens_in"] > 0
    text = await run.metrics_text()
    assert 'embeddings_total{api="orchqueue",engine="mock",pool_id="mock"} 1.0' in text
    async with run.http.get(f"{run.url}/v1/tasks/{tid}") as r:
        assert (await r.json())["state"] == "completed"


async def test_embedding_tasks_wait_in_the_queue_and_cancel(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-1011: with the one slot busy, an embedding task is queued (position 0),
    runs when the slot frees, and a queued one can be canceled."""
    run = await start_orchestrator(
        mock_config(adapter_options={"embeddings": True, "token_delay_ms": 20, "slots": 1})
    )
    long = (await (await run.submit(max_tokens=40)).json())["task_id"]
    await run.until_tokens(long, 1)
    first = await run.submit(workload="embedding", prompt=None, inputs=["one"])
    second = await run.submit(workload="embedding", prompt=None, inputs=["two"])
    assert first.status == 202 and second.status == 202
    a, b = (await first.json()), (await second.json())
    assert (a["queue_position"], b["queue_position"]) == (0, 1)
    async with run.http.post(f"{run.url}/v1/tasks/{b['task_id']}/cancel") as r:
        assert r.status == 204
    done = await run.events(a["task_id"])
    assert [e for _, e, _ in done][-2:] == ["embedding", "end"]
    canceled = await run.events(b["task_id"])
    assert [e for _, e, _ in canceled][-1] == "end"
    assert canceled[-1][2]["reason"] == "canceled"
    assert "embedding" not in [e for _, e, _ in canceled]


_EMB: dict[str, Any] = {"workload": "embedding", "prompt": None}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_EMB, "$.inputs"),
        ({**_EMB, "prompt": "x", "inputs": ["a"]}, "$.prompt"),
        ({**_EMB, "inputs": ["a"], "max_tokens": 4}, "$.max_tokens"),
        ({**_EMB, "inputs": ["a"], "grammar": 'root ::= "a"'}, "$.grammar"),
        ({**_EMB, "inputs": []}, "inputs"),
        ({**_EMB, "inputs": [""]}, "inputs"),
        ({"prompt": "x", "inputs": ["a"]}, "$.inputs"),
    ],
)
async def test_malformed_embedding_tasks_are_refused_by_field(
    start_orchestrator: Any, mock_config: Any, body: dict[str, Any], field: str
) -> None:
    """ORCH-1011: each misuse is a 400 naming its field; nothing is queued."""
    run = await start_orchestrator(mock_config(adapter_options={"embeddings": True}))
    resp = await run.submit(**body)
    assert resp.status == 400, await resp.text()
    doc = await resp.json()
    assert doc["code"] == "INVALID_PARAMS" and field in doc["message"], doc
    assert len(run.orch.pools["mock"].queue) == 0


async def test_workload_and_engine_must_agree(start_orchestrator: Any, mock_config: Any) -> None:
    """ORCH-1012: an embedding task on an engine without `embed`, and a generation
    task on an engine that only embeds, are 400 naming `$.workload`."""
    plain = await start_orchestrator(mock_config())
    resp = await plain.submit(workload="embedding", prompt=None, inputs=["a"])
    assert resp.status == 400 and "$.workload" in (await resp.json())["message"]
    only = await start_orchestrator(mock_config(adapter_options={"embed_only": True}))
    resp = await only.submit(prompt="generate, please")
    assert resp.status == 400 and "$.workload" in (await resp.json())["message"]
    resp = await only.submit(workload="embedding", prompt=None, inputs=["but embed, yes"])
    assert resp.status == 202, await resp.text()
    events = await only.events((await resp.json())["task_id"])
    assert [e for _, e, _ in events][-2:] == ["embedding", "end"]


async def test_an_embedding_task_through_a_state_store(
    start_orchestrator: Any, mock_config: Any
) -> None:
    """ORCH-1011 with a state store: the request (its inputs) travels through the
    store's task record and the vectors through its event log."""
    doc = msgspec.to_builtins(mock_config(adapter_options={"embeddings": True}))
    doc["state"] = {"backend": "memory"}
    run = await start_orchestrator(msgspec.convert(doc, Config))
    assert run.orch.state is not None
    resp = await run.submit(workload="embedding", prompt=None, inputs=["x", "y"])
    assert resp.status == 202, await resp.text()
    tid = (await resp.json())["task_id"]
    events = await run.events(tid)
    assert [e for _, e, _ in events][-3:] == ["embedding", "embedding", "end"]
    logged = await run.orch.state.store.read(tid)
    assert [ev.kind for ev in logged].count("embedding") == 2
    assert [d["vector"] for _, e, d in events if e == "embedding"] == [
        pytest.approx(_mock_vector("x")),
        pytest.approx(_mock_vector("y")),
    ]
