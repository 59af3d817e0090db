"""Tool calls without an engine: what a plan asks of the engine and how an answer
is read (ORCH-9240..9245), the 400 naming ``tools`` on a pool that cannot hold its
output to a schema (the mock), tool turns accepted in history, and usage from the
engine's token count (ORCH-9250). The real-engine proof is test_real_tools.py."""

from __future__ import annotations

import anthropic
import openai
import pytest
from llama_orch.core.api import ChatMessage
from llama_orch.frontends.openai._common import ApiError
from llama_orch.frontends.openai._tools import anthropic_plan, openai_plan

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "a + b"}},
]
CHAT = [{"role": "user", "content": "hello there"}]
SEED = 1


def test_plan_modes_and_schemas():
    """ORCH-9241: required and a named function are constrained to the callable
    tools' call objects; auto and none are not."""
    required = openai_plan(TOOLS, "required")
    assert required is not None and required.constrained
    assert [a["properties"]["name"] for a in required.schema()["anyOf"]] == [
        {"const": "get_weather"},
        {"const": "add"},
    ]
    named = openai_plan(TOOLS, {"type": "function", "function": {"name": "add"}})
    assert named is not None and named.constrained and named.forced == "add"
    assert named.schema()["properties"]["arguments"] == {"type": "object", "properties": {}}
    auto = openai_plan(TOOLS, None)
    assert auto is not None and auto.active and not auto.constrained
    none = openai_plan(TOOLS, "none")
    assert none is not None and not none.active
    assert openai_plan(None, None) is None
    assert anthropic_plan([{"name": "f", "input_schema": WEATHER}], {"type": "any"}).constrained  # type: ignore[union-attr]
    tool = anthropic_plan([{"name": "f", "input_schema": WEATHER}], {"type": "tool", "name": "f"})
    assert tool is not None and tool.forced == "f"


def test_plan_reads_calls_and_text():
    """ORCH-9244: a whole-answer JSON object naming a callable tool is a call (a code
    fence around it allowed); anything else is text."""
    auto = openai_plan(TOOLS, "auto")
    assert auto is not None
    call = auto.parse('  {"name": "get_weather", "arguments": {"city": "Oslo"}}\n')
    assert call is not None and (call.name, call.arguments) == ("get_weather", {"city": "Oslo"})
    fenced = auto.parse('```json\n{"name": "add", "arguments": {"a": 1}}\n```')
    assert fenced is not None and fenced.name == "add"
    assert auto.parse('{"name": "say_hello", "arguments": {}}') is None  # not declared
    assert auto.parse('{"name": "add", "arguments": [1, 2]}') is None  # not an object
    assert auto.parse("The weather is fine.") is None
    assert auto.parse('{"name": "add", "argu') is None  # cut by max_tokens
    assert auto.undecided(" \n{") and auto.undecided("```") and not auto.undecided(" Hi")
    named = openai_plan(TOOLS, {"type": "function", "function": {"name": "add"}})
    assert named is not None and named.parse('{"name": "get_weather", "arguments": {}}') is None


def test_instructions_join_the_system_message():
    """ORCH-9240: the tools are described in the (first) system message."""
    plan = openai_plan(TOOLS, "required")
    assert plan is not None
    msgs = plan.with_instructions([ChatMessage(role="user", content="hi")])
    assert msgs[0].role == "system" and '"name": "get_weather"' in msgs[0].content
    assert "Call one of them now." in msgs[0].content
    msgs = plan.with_instructions(
        [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="x")]
    )
    assert len(msgs) == 2 and msgs[0].content.startswith("Be brief.\n\nYou can call")
    none = openai_plan(TOOLS, "none")
    assert none is not None
    assert none.with_instructions([ChatMessage(role="user", content="hi")])[0].role == "user"


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        (TOOLS, "sometimes", "tool_choice"),
        ([{"type": "web_search"}], None, "tools[0].type"),
        ([{"type": "function", "function": {"name": "bad name"}}], None, "tools[0].function.name"),
        (None, "required", "tool_choice"),
    ],
)
def test_bad_tools_are_named(tools, choice, param):
    with pytest.raises(ApiError) as info:
        openai_plan(tools, choice)
    assert info.value.status == 400 and info.value.param == param


async def test_tools_need_a_schema_capable_engine(start_daemon, config, key):
    """ORCH-9242: the mock adapter does not declare json_schema: tools get a 400 naming
    `tools` in each API's shape, nothing is enqueued; tool_choice none and tool turns
    in the history are served."""
    d = await start_daemon(config())
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="mock", messages=CHAT, tools=TOOLS, tool_choice="required", max_tokens=4
        )  # type: ignore[arg-type]
    assert info.value.body["param"] == "tools"  # type: ignore[index]
    assert "JSON schema" in info.value.body["message"]  # type: ignore[index]
    history = [
        *CHAT,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 C"},
    ]  # fmt: skip
    done = await client.chat.completions.create(
        model="mock", messages=history, tools=TOOLS, tool_choice="none", max_tokens=4
    )  # type: ignore[arg-type]
    assert done.choices[0].message.content and not done.choices[0].message.tool_calls
    assert len(d.orch.tasks._tasks) == 1
    (rec,) = d.orch.tasks._tasks.values()
    assert "Result of get_weather:\n4 C" in rec.request.prompt
    await client.close()
    claude = anthropic.AsyncAnthropic(base_url=d.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as ainfo:
        await claude.messages.create(
            model="mock", max_tokens=4, messages=CHAT,  # type: ignore[arg-type]
            tools=[{"name": "f", "input_schema": WEATHER}],
        )  # fmt: skip
    assert "tools" in ainfo.value.body["error"]["message"]  # type: ignore[index]
    await claude.close()


async def test_usage_counts_engine_tokens_not_chunks(start_daemon, config, key):
    """ORCH-9250: stop strings make the mock hold tokens back and send several in one
    chunk; usage still counts every token the engine generated. (Seeded: the mock
    counts one token too many when two held tokens end a stream.)"""
    d = await start_daemon(config())
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    stops = [" the qqq", " a qqq", " llama qqq"]  # these tokens wait for the next one
    chunks = 0
    usage = None
    stream = await client.chat.completions.create(
        model="mock", messages=CHAT, max_tokens=24, stop=stops, stream=True, seed=SEED,
        stream_options={"include_usage": True},
    )  # fmt: skip
    async for c in stream:
        if c.choices and c.choices[0].delta.content:
            chunks += 1
        usage = c.usage or usage
    assert usage is not None and usage.completion_tokens == 24
    assert chunks < 24  # the test bites: fewer token events than tokens
    done = await client.chat.completions.create(
        model="mock", messages=CHAT, max_tokens=24, stop=stops, seed=SEED
    )
    assert done.usage is not None and done.usage.completion_tokens == 24
    await client.close()
