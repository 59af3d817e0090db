"""The Anthropic facade driven by the unmodified ``anthropic`` SDK (mock engine)."""

from __future__ import annotations

import anthropic
import httpx
import pytest

MSGS = [{"role": "user", "content": "hello there"}]


async def test_messages_non_stream_and_stream(start_daemon, config, key):
    """ORCH-9130, ORCH-9131: x-api-key accepted; usage; Anthropic's stream events."""
    d = await start_daemon(config())
    client = anthropic.AsyncAnthropic(base_url=d.url, api_key=key)  # sends x-api-key
    raw = await client.messages.with_raw_response.create(
        model="mock",
        max_tokens=5,
        messages=MSGS,
        system="be brief",
        extra_body={"temperature": 0, "seed": 3},
    )
    msg = await raw.parse()
    rec = d.orch.tasks.get(raw.headers["x-llorch-task-id"])
    assert rec is not None and rec.api == "anthropic" and rec.tenant == "acme"
    assert rec.state == "completed"
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 5
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.usage.input_tokens == rec.prompt_tokens > 0

    async with client.messages.stream(
        model="mock",
        max_tokens=5,
        messages=MSGS,
        system="be brief",
        extra_body={"temperature": 0, "seed": 3},
    ) as stream:
        kinds = [ev.type async for ev in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].text == msg.content[0].text  # same prompt, temperature 0
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 5
    await client.close()


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"model": "nope"}, 404, "not_found_error"),
        (
            {"tools": [{"name": "f", "input_schema": {"type": "object"}}]},
            400,
            "invalid_request_error",
        ),
        ({"max_tokens": 9000}, 400, "invalid_request_error"),  # over max_tokens_limit
    ],
)
async def test_errors_in_anthropic_shape(start_daemon, config, key, body, status, kind):
    """ORCH-9114: Anthropic's error envelope and status; nothing enqueued."""
    d = await start_daemon(config())
    client = anthropic.AsyncAnthropic(base_url=d.url, api_key=key, max_retries=0)
    args = {"model": "mock", "max_tokens": 4, "messages": MSGS, **body}
    with pytest.raises(anthropic.APIStatusError) as info:
        await client.messages.create(**args)
    assert info.value.status_code == status
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == kind
    assert len(d.orch.tasks) == 0
    await client.close()


async def test_bearer_also_accepted_and_bad_key_refused(start_daemon, config, key):
    """ORCH-9102: ``Authorization: Bearer`` works as well as ``x-api-key``."""
    d = await start_daemon(config())
    body = {"model": "mock", "max_tokens": 2, "messages": MSGS}
    async with httpx.AsyncClient(base_url=d.url) as http:
        r = await http.post("/v1/messages", json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and r.json()["type"] == "message"
        r = await http.post(
            "/v1/messages", json=body, headers={"x-api-key": "llo_wrong" + "x" * 30}
        )
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
