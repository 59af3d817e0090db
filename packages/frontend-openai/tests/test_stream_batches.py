"""ORCH-2763: the events available together go out as one body message, with the same
``data:`` chunks in the same order as one message per event (ORCH-9121), except the
stream's first token, which goes out at once; an event that arrives alone goes out at
once. No engine, no server: the chunk generators themselves."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from llama_orch.core.adapter_api import GenerateRequest
from llama_orch.core.api import EndEvent, TokenEvent
from llama_orch.frontends.openai._flow import Facade
from llama_orch.frontends.openai._openai import _chat_chunks, _completion_chunks, render_error
from llama_orch.orchestratord.frontends import FrontendHost
from llama_orch.orchestratord.tasks import TaskRecord


def _rec() -> TaskRecord:
    req = GenerateRequest(task_id="t1", prompt="p", max_tokens=4, seed=0)
    return TaskRecord("t1", "pool", "mock", "interactive", req, 1, tenant="a")


def _facade() -> Facade:
    host = FrontendHost(SimpleNamespace(state=None), None)  # type: ignore[arg-type]
    return Facade(host, "openai", render_error)


def _data(chunk: bytes) -> list[Any]:
    out: list[Any] = []
    for block in chunk.decode().split("\n\n"):
        if block:
            assert block.startswith("data: ")
            body = block[len("data: ") :]
            out.append(body if body == "[DONE]" else json.loads(body))
    return out


def _end(rec: TaskRecord, n: int) -> None:
    rec.finish(EndEvent(tokens_out=n, decode_ms=1, reason="eos", tokens_in=3))


async def test_chat_events_available_together_are_one_message() -> None:
    rec = _rec()
    rec.append(TokenEvent("He", 0))
    rec.append(TokenEvent("llo", 1))
    rec.append(TokenEvent("!", 2))
    _end(rec, 3)
    msgs = [m async for m in _chat_chunks(_facade(), rec, "m", 7, True, False)]
    # the role chunk, the first token at once (TTFT), then the rest the log already held
    assert len(msgs) == 3
    role, first, rest = _data(msgs[0]), _data(msgs[1]), _data(msgs[2])
    assert role[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in first] == ["He"]
    assert [c["choices"][0]["delta"].get("content") for c in rest[:3]] == ["llo", "!", None]
    assert rest[2]["choices"][0]["finish_reason"] == "stop"
    assert rest[3]["choices"] == [] and rest[3]["usage"]["completion_tokens"] == 3
    assert rest[4] == "[DONE]" and len(rest) == 5
    assert all(c["id"] == "chatcmpl-t1" for c in role + first + rest[:4])


async def test_an_event_that_arrives_alone_is_written_at_once() -> None:
    rec = _rec()
    gen = _completion_chunks(_facade(), rec, "m", 7, False, False)
    first = asyncio.ensure_future(anext(gen))
    await asyncio.sleep(0)
    assert not first.done()  # nothing in the log yet: it waits
    rec.append(TokenEvent("a", 0))
    assert [c["choices"][0]["text"] for c in _data(await first)] == ["a"]
    rec.append(TokenEvent("b", 1))
    rec.append(TokenEvent("c", 2))
    _end(rec, 3)
    rest = _data(await anext(gen))  # after the first token, one message per batch
    assert [c["choices"][0]["text"] for c in rest[:3]] == ["b", "c", ""]
    assert rest[2]["choices"][0]["finish_reason"] == "stop" and rest[3] == "[DONE]"
    assert [m async for m in gen] == []
