"""The Responses API on a state store (ORCH-2592, ORCH-2593): two orchestratord
instances share one real valkey-server and one engine slot, and the official
``openai`` SDK asks one instance about a response the other created: retrieve, a
streamed retrieve resumed with ``starting_after``, and cancel answer exactly as the
creating instance does."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import msgspec
import openai
import pytest
from llama_orch.core.config import Config
from llama_orch.frontends.openai._flow import Backgrounds, ResponseMeta
from llama_orch.frontends.openai._tools import responses_plan
from llama_orch.testing_engines.valkey import valkey_server

from .conftest import mock_config


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_server(tmp_path_factory.mktemp("valkey")) as url:
        yield url


def _stored(url: str) -> Config:
    doc = msgspec.to_builtins(mock_config(adapter_options={"slots": 1, "token_delay_ms": 10}))
    doc["state"] = {"backend": "valkey", "url": url, "key_prefix": f"r{uuid.uuid4().hex[:8]}"}
    return msgspec.convert(doc, Config)


def _dump(events: list[Any]) -> list[dict[str, Any]]:
    return [ev.model_dump() for ev in events]


async def test_a_response_answers_on_every_instance(start_daemon, valkey_url, key):
    cfg = _stored(valkey_url)
    a, b = await start_daemon(cfg), await start_daemon(cfg)
    store = a.orch.state.store
    async with (
        openai.AsyncOpenAI(base_url=a.base, api_key=key, max_retries=0) as on_a,
        openai.AsyncOpenAI(base_url=b.base, api_key=key, max_retries=0) as on_b,
    ):
        created = await on_a.responses.create(
            model="mock-model", input="tell me a story", max_output_tokens=40,
            background=True, temperature=0.5, top_p=0.9,
        )  # fmt: skip
        assert created.status == "queued" and created.background is True
        # a streamed retrieve on A, broken after 12 events, resumed on B
        first = []
        stream = await on_a.responses.retrieve(created.id, stream=True)
        async with stream:
            async for ev in stream:
                first.append(ev)
                if len(first) == 12:
                    break
        rest = [
            ev
            async for ev in await on_b.responses.retrieve(
                created.id, stream=True, starting_after=first[-1].sequence_number
            )
        ]
        events = first + rest
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[-1].type == "response.incomplete"
        # exactly the events the creating instance numbers, from either instance
        whole_a = [ev async for ev in await on_a.responses.retrieve(created.id, stream=True)]
        whole_b = [ev async for ev in await on_b.responses.retrieve(created.id, stream=True)]
        assert _dump(events) == _dump(whole_a) == _dump(whole_b)
        # retrieve: the same object from both, with the request's own fields
        done_a = await on_a.responses.retrieve(created.id)
        done_b = await on_b.responses.retrieve(created.id)
        assert done_b.model_dump() == done_a.model_dump()
        assert (done_b.model, done_b.background) == ("mock-model", True)
        assert done_b.status == "incomplete"
        assert (done_b.temperature, done_b.top_p) == (0.5, 0.9)
        assert done_b.created_at == created.created_at
        assert done_b.usage is not None and done_b.usage.output_tokens == 40
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == done_b.output_text

        # cancel on B of a response A created and runs: A's run aborts (ORCH-2540),
        # B answers cancelled once the store holds the terminal, the slot is free
        long = await on_a.responses.create(
            model="mock-model", input="go on", max_output_tokens=1000, background=True
        )
        tid = long.id.removeprefix("resp_")
        async with contextlib.aclosing(store.tail(tid)) as log:
            async for ev in log:
                if ev.kind == "token":
                    break
        view = await store.task(tid)
        assert view is not None and view.owner == a.orch.state.instance
        canceled = await on_b.responses.cancel(long.id)
        assert canceled.status == "cancelled" and canceled.background is True
        assert (await on_a.responses.retrieve(long.id)).status == "cancelled"
        logged = await store.read(tid)
        assert sum(e.kind in ("end", "error") for e in logged) == 1
        assert logged[-1].kind == "end"
        assert msgspec.json.decode(logged[-1].data)["reason"] == "canceled"
        assert len([e for e in logged if e.kind == "token"]) < 1000
        assert await store.busy("mock") == {}
        rec = a.orch.tasks.get(tid)
        assert rec is not None
        assert await a.orch.tasks.wait_for(lambda: rec.terminal, 10), "A's run went on"
        # an unknown id is still a 404 in OpenAI's shape on every instance
        with pytest.raises(openai.NotFoundError):
            await on_b.responses.retrieve("resp_" + uuid.uuid4().hex)


def test_the_stored_note_gives_back_the_responses_own_fields() -> None:
    """ORCH-2592: the fields a store keeps with the task give the same meta, tool plan
    included, as the creating instance recorded."""
    tools = [
        {"type": "function", "name": "weather", "description": "the weather",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    ]  # fmt: skip
    meta = ResponseMeta(
        "mock-model", True, responses_plan(tools, "required"), tools, "required",
        {"type": "json_object"},
    )  # fmt: skip
    host = SimpleNamespace(orch=SimpleNamespace(state=object()))  # a store is configured
    note = Backgrounds(host).note(meta)  # type: ignore[arg-type]  # reason: reads orch.state
    assert note is not None
    rec = SimpleNamespace(task_id="t", pool_id="mock", note=note)
    # another instance: it never saw the create, only the task's stored note
    assert Backgrounds(host).get(rec) == meta  # type: ignore[arg-type]  # reason: as above
    assert Backgrounds(host).get(SimpleNamespace(task_id="u", pool_id="mock", note=None)) == (  # type: ignore[arg-type]  # reason: as above
        ResponseMeta("mock")
    )
