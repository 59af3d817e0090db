"""Function tools on the Responses API without an engine (ORCH-9270..9274, 9276):
the plan, input items as turns, the output items and stream events as a pure
function of a task's events (parsed by the unmodified SDK's own event types), and
the 400s on a pool that cannot hold its output to a schema (the mock). The
real-engine proof is ``test_real_tools.py``."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import openai
import pydantic
import pytest
from llama_orch.core.api import EndEvent, StartedEvent, StreamEvent, TokenEvent
from llama_orch.frontends.openai._common import ApiError
from llama_orch.frontends.openai._engine import text_format_schema
from llama_orch.frontends.openai._flow import ResponseMeta
from llama_orch.frontends.openai._responses import ResponseView, _input
from llama_orch.frontends.openai._tools import responses_plan
from llama_orch.frontends.openai._wire import ResponsesRequest
from openai.types.responses import Response, ResponseStreamEvent

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "Weather", "parameters": WEATHER},
    {"type": "function", "name": "add", "strict": True},
]
TASK = "0123456789abcdef0123456789abcdef"
_EVENTS: pydantic.TypeAdapter[ResponseStreamEvent] = pydantic.TypeAdapter(ResponseStreamEvent)


def test_plan_of_flat_function_tools():
    """ORCH-9270: flat function tools; tool_choice none/auto/required/named."""
    required = responses_plan(TOOLS, "required")
    assert required is not None and required.constrained
    assert [t.name for t in required.tools] == ["get_weather", "add"]
    named = responses_plan(TOOLS, {"type": "function", "name": "get_weather"})
    assert named is not None and named.forced == "get_weather"
    assert named.schema()["properties"]["arguments"] == WEATHER
    auto = responses_plan(TOOLS, None)
    assert auto is not None and auto.active and not auto.constrained
    assert responses_plan(None, "auto") is None
    bad: list[tuple[Any, Any, str]] = [
        ([{"type": "web_search"}], None, "tools[0].type"),
        ([{"type": "function", "name": "a b"}], None, "tools[0].name"),
        (TOOLS, {"type": "function", "name": "nope"}, "tool_choice.name"),
        (TOOLS, {"type": "allowed_tools", "tools": []}, "tool_choice"),
        (None, "required", "tool_choice"),
    ]
    for tools, choice, param in bad:
        with pytest.raises(ApiError) as err:
            responses_plan(tools, choice)
        assert err.value.status == 400 and err.value.param == param


def test_text_format_schema():
    """ORCH-9276: json_schema / json_object map to a schema; text to none."""
    assert text_format_schema(None) is None and text_format_schema({"type": "text"}) is None
    assert text_format_schema({"type": "json_object"}) == {"type": "object"}
    assert text_format_schema({"type": "json_schema", "name": "w", "schema": WEATHER}) == WEATHER
    with pytest.raises(ApiError) as err:
        text_format_schema({"type": "json_schema", "name": "w"})
    assert err.value.param == "text.format.schema"


def test_function_call_items_become_turns():
    """ORCH-9271: a response's output sent back (text + call), then the call's output:
    the call in the assistant turn, the output as a user turn named by call_id."""
    req = ResponsesRequest(
        model="m",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "get_weather",
             "arguments": '{"city": "Paris"}', "status": "completed"},
            {"type": "function_call_output", "call_id": "call_9", "output": "18 C"},
            {"type": "function_call_output", "call_id": "x", "output": [
                {"type": "input_text", "text": "?"}]},
        ],
    )  # fmt: skip
    turns = [(m.role, m.content) for m in _input(req)]
    assert turns == [
        ("system", "Be brief."),
        ("user", "Weather in Paris?"),
        ("assistant", 'Let me look.\n{"name": "get_weather", "arguments": {"city": "Paris"}}'),
        ("user", "Result of get_weather:\n18 C"),
        ("user", "Result of the function:\n?"),
    ]
    for item, param in (
        ({"type": "reasoning", "summary": []}, "input[0]"),
        ({"type": "function_call", "call_id": "c", "arguments": "{}"}, "input[0].name"),
        ({"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]},
         "input[0].output[0]"),
    ):  # fmt: skip
        with pytest.raises(ApiError) as err:
            _input(ResponsesRequest(model="m", input=[item]))
        assert err.value.param == param


def _rec() -> Any:
    return SimpleNamespace(
        task_id=TASK,
        created_wall=1.0,
        engine_tokens=0,
        request=SimpleNamespace(temperature=0.0, top_p=None),
    )


def _run(meta: ResponseMeta, tokens: list[str], reason: str = "eos") -> list[dict[str, Any]]:
    """The numbered events of one task, each parsed by the SDK's own event types."""
    view = ResponseView(_rec(), meta)
    started = StartedEvent(
        queue_position=0, predicted_start_ms=0, queue_wait_ms=0, pool_id="p", replica_id="r",
        engine="e", engine_version="v", model_digest="d",
    )  # fmt: skip
    log: list[StreamEvent | None] = [None, started]
    log += [TokenEvent(t, i) for i, t in enumerate(tokens)]
    log.append(EndEvent(tokens_out=len(tokens), decode_ms=1, reason=reason, tokens_in=3))  # type: ignore[arg-type]
    out = []
    for ev in log:
        for kind, data in view.feed(ev):
            doc = {"type": kind, "sequence_number": len(out), **data}
            _EVENTS.validate_python(doc)  # the SDK can read every event
            out.append(doc)
    return out


CALL = ['{"name": "get_weather", ', '"arguments": {"city": ', '"Oslo"}}']


def test_a_call_streams_as_a_function_call_item():
    """ORCH-9272/9273: constrained -> nothing until the end, then the function_call
    item added, one arguments delta, done, item done, completed; the response echoes
    the tools and tool_choice."""
    choice = {"type": "function", "name": "get_weather"}
    meta = ResponseMeta("m", plan=responses_plan(TOOLS, choice), tools=TOOLS, tool_choice=choice)
    events = _run(meta, CALL)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, delta, done, item_done, completed = events[2:]
    assert item_done["item"] == completed["response"]["output"][0]
    assert added["item"]["arguments"] == "" and added["item"]["status"] == "in_progress"
    assert json.loads(delta["delta"]) == {"city": "Oslo"} == json.loads(done["arguments"])
    assert delta["item_id"] == added["item"]["id"] == f"fc_{TASK}"
    resp = Response.model_validate(completed["response"])
    (call,) = resp.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id == "call_" + TASK[:24] and call.arguments == done["arguments"]
    assert call.status == "completed" and resp.status == "completed"
    assert resp.tool_choice.type == "function" and [t.name for t in resp.tools] == [  # type: ignore[union-attr]
        "get_weather",
        "add",
    ]


def test_auto_text_is_released_once_it_cannot_be_a_call():
    """ORCH-9273: auto holds a blank start, then the message events with the held
    text in one delta and each later token as its own."""
    meta = ResponseMeta("m", plan=responses_plan(TOOLS, "auto"), tools=TOOLS)
    events = _run(meta, ["  ", "It is", " sunny."])
    kinds = [e["type"] for e in events]
    assert kinds[:6] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
    ]
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == [
        "  It is",
        " sunny.",
    ]
    resp = Response.model_validate(events[-1]["response"])
    assert resp.output_text == "  It is sunny." and resp.output[0].type == "message"
    # auto that ends in a call is a call; a call cut by max tokens is text, incomplete
    auto_call = _run(meta, CALL)
    assert Response.model_validate(auto_call[-1]["response"]).output[0].type == "function_call"
    cut = _run(meta, CALL[:2], reason="length")
    last = Response.model_validate(cut[-1]["response"])
    assert last.status == "incomplete" and last.output[0].type == "message"
    assert last.output_text == "".join(CALL[:2])


def test_events_are_a_pure_function_of_the_log():
    """ORCH-9273/9274: two readers of the same log number the same events, and a reader
    without a tool plan still renders plain messages as before."""
    meta = ResponseMeta("m", plan=responses_plan(TOOLS, "required"), tools=TOOLS)
    assert _run(meta, CALL) == _run(meta, CALL)
    plain = _run(ResponseMeta("m"), ["hi"])
    assert [e["type"] for e in plain][2:4] == [
        "response.output_item.added",
        "response.content_part.added",
    ]


async def test_tools_and_text_format_refused_on_a_pool_that_cannot_hold_json(
    start_daemon, config, key
):
    """ORCH-9270/9276: the mock declares no json_schema: 400 naming `tools` /
    `text.format`, nothing enqueued; tool_choice none and text formats pass."""
    d = await start_daemon(config())
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    tools: Any = TOOLS
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(model="mock", input="hi", tools=tools)
    assert err.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(
            model="mock", input="hi",
            text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER}},
        )  # fmt: skip
    assert err.value.body["param"] == "text.format"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        await client.responses.create(
            model="mock", input="hi", tools=[{"type": "web_search"}],  # type: ignore[list-item]
        )  # fmt: skip
    assert err.value.body["param"] == "tools[0].type"  # type: ignore[index]
    assert not d.orch.tasks._tasks  # nothing enqueued
    resp = await client.responses.create(
        model="mock", input="hi", tools=tools, tool_choice="none", max_output_tokens=2
    )
    assert resp.output[0].type == "message" and [t.name for t in resp.tools] == [  # type: ignore[union-attr]
        "get_weather",
        "add",
    ]
    again = await client.responses.retrieve(resp.id)  # ORCH-9274: same echo on retrieve
    assert again.tool_choice == "none" and len(again.tools) == 2
    await client.close()
