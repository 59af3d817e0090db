"""ORCH-7043 on the facades, driven by the unmodified ``openai`` and ``anthropic`` SDKs
(their ``extra_headers``): a client's ``traceparent`` makes each task's root span
``task`` a child of the client's span (mock engine)."""

from __future__ import annotations

import anthropic
import openai
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

CHAT = [{"role": "user", "content": "hello there"}]
PARENT_ID = "00f067aa0ba902b7"
SPANS = ["admission", "dispatch", "engine.request", "queue", "stream.end", "task"]


def _headers(n: int) -> dict[str, str]:
    """A distinct client trace per call (its trace id ends with ``n``)."""
    return {"traceparent": f"00-{n:032x}-{PARENT_ID}-01", "tracestate": f"call={n}"}


def _assert_task_in_client_trace(exporter: InMemorySpanExporter, n: int) -> None:
    roots = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "task" and format_trace_id(s.context.trace_id) == f"{n:032x}"
    ]
    assert len(roots) == 1, f"call {n}: {len(roots)} task spans in the client's trace"
    root = roots[0]
    assert root.parent is not None and root.parent.is_remote
    assert format_span_id(root.parent.span_id) == PARENT_ID
    assert root.context.trace_state.to_header() == f"call={n}"
    task_id = root.attributes["llama_orch.task_id"]
    spans: list[ReadableSpan] = [
        s for s in exporter.get_finished_spans() if s.attributes["llama_orch.task_id"] == task_id
    ]
    assert sorted(s.name for s in spans) == SPANS
    assert {format_trace_id(s.context.trace_id) for s in spans} == {f"{n:032x}"}


async def test_openai_and_anthropic_sdks_continue_the_clients_trace(start_daemon, config, key):
    """ORCH-7043: chat (plain and streamed), completions, responses, messages."""
    d = await start_daemon(config())
    exporter = InMemorySpanExporter()
    d.orch.tracing.add_processor(SimpleSpanProcessor(exporter))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    await client.chat.completions.create(
        model="mock", messages=CHAT, max_tokens=3, extra_headers=_headers(1)
    )
    stream = await client.chat.completions.create(
        model="mock", messages=CHAT, max_tokens=3, stream=True, extra_headers=_headers(2)
    )
    assert [c async for c in stream]
    await client.completions.create(
        model="mock", prompt="once upon", max_tokens=3, extra_headers=_headers(3)
    )
    await client.responses.create(
        model="mock", input="hello there", max_output_tokens=3, extra_headers=_headers(4)
    )
    await client.close()
    claude = anthropic.AsyncAnthropic(base_url=d.url, api_key=key)
    await claude.messages.create(
        model="mock", max_tokens=3, messages=CHAT, extra_headers=_headers(5)
    )
    await claude.close()
    for n in range(1, 6):
        _assert_task_in_client_trace(exporter, n)


async def test_an_sdk_call_with_a_bad_traceparent_is_answered(start_daemon, config, key):
    """ORCH-7043: an invalid header: a new trace, and the answer as without it."""
    d = await start_daemon(config())
    exporter = InMemorySpanExporter()
    d.orch.tracing.add_processor(SimpleSpanProcessor(exporter))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    done = await client.chat.completions.create(
        model="mock",
        messages=CHAT,
        max_tokens=3,
        extra_headers={"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"},
    )
    await client.close()
    assert done.usage is not None and done.usage.completion_tokens == 3
    [root] = [s for s in exporter.get_finished_spans() if s.name == "task"]
    assert root.parent is None and root.context.trace_id != 0
