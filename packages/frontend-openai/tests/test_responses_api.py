"""OpenAI's Responses API on tasks, driven by the unmodified ``openai`` SDK (mock
engine): background, a streamed retrieve broken on purpose and resumed with
``starting_after`` (nothing lost or repeated), cancel (ORCH-9140..ORCH-9144)."""

from __future__ import annotations

import asyncio

import openai


async def test_create_non_stream_and_stream(start_daemon, config, key):
    """ORCH-9140: one task per response; usage; the stream's events are numbered."""
    d = await start_daemon(config())
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    resp = await client.responses.create(
        model="mock", input="hello there", max_output_tokens=5, instructions="be brief"
    )
    assert resp.id.startswith("resp_") and resp.status == "incomplete"  # hit max tokens
    assert resp.output_text and resp.usage is not None and resp.usage.output_tokens == 5
    rec = d.orch.tasks.get(resp.id.removeprefix("resp_"))
    assert rec is not None and rec.api == "openai" and rec.state == "completed"

    stream = await client.responses.create(
        model="mock", input=[{"role": "user", "content": "hi"}], max_output_tokens=4, stream=True
    )
    events = [ev async for ev in stream]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text
    await client.close()


async def test_background_retrieve_broken_and_resumed(start_daemon, config, key):
    """ORCH-9141, ORCH-9142: a background response streamed by retrieve, the stream
    broken on purpose, resumed with starting_after: every event exactly once."""
    d = await start_daemon(config(adapter_options={"token_delay_ms": 10}))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    created = await client.responses.create(
        model="mock", input="tell me a story", max_output_tokens=40, background=True
    )
    assert created.status == "queued" and created.background is True
    first = []
    stream = await client.responses.retrieve(created.id, stream=True)
    async with stream:
        async for ev in stream:
            first.append(ev)
            if len(first) == 12:
                break  # the client goes away mid-stream
    rec = d.orch.tasks.get(created.id.removeprefix("resp_"))
    assert rec is not None and rec.state != "canceled"  # background: a reader leaving is fine
    last = first[-1].sequence_number
    rest = [
        ev
        async for ev in await client.responses.retrieve(
            created.id, stream=True, starting_after=last
        )
    ]
    events = first + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.incomplete"
    done = await client.responses.retrieve(created.id)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == done.output_text and done.usage is not None
    assert done.usage.output_tokens == 40
    await client.close()


async def test_cancel_a_background_response(start_daemon, config, key):
    """ORCH-9143: cancel ends the task canceled; retrieve reports cancelled."""
    d = await start_daemon(config(adapter_options={"token_delay_ms": 20}))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    created = await client.responses.create(
        model="mock", input="go on", max_output_tokens=1000, background=True
    )
    rec = d.orch.tasks.get(created.id.removeprefix("resp_"))
    assert rec is not None
    for _ in range(200):
        if rec.tokens_out >= 2:
            break
        await asyncio.sleep(0.01)
    canceled = await client.responses.cancel(created.id)
    assert canceled.status == "cancelled" and rec.state == "canceled"
    assert (await client.responses.retrieve(created.id)).status == "cancelled"
    out = rec.tokens_out
    await asyncio.sleep(0.2)
    assert rec.tokens_out == out < 1000
    await client.close()


async def test_unknown_response_is_404_in_openai_shape(start_daemon, config, key):
    d = await start_daemon(config())
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    try:
        await client.responses.retrieve("resp_nope")
    except openai.NotFoundError as exc:
        assert exc.body["code"] == "not_found"  # type: ignore[index]
    else:
        raise AssertionError("expected 404")
    await client.close()
