"""A client's disconnect cancels its task under either HTTP server (ORCH-2813,
ORCH-9113): the SDK closes the stream, or times out a whole answer, and the task
ends ``canceled`` with hypercorn and with uvicorn alike."""

from __future__ import annotations

import asyncio

import msgspec
import openai
import pytest
from llama_orch.core.config import Config

CHAT = [{"role": "user", "content": "hello there"}]
SERVERS = ["hypercorn", "uvicorn"]


def _on(cfg: Config, http_server: str) -> Config:
    return msgspec.structs.replace(
        cfg, server=msgspec.structs.replace(cfg.server, http_server=http_server)
    )


async def _ended(d, tid: str):
    """The task's record once it has ended (or after 2 s)."""
    rec = d.orch.tasks.get(tid)
    assert rec is not None
    await d.orch.tasks.wait_for(lambda: rec.terminal, 2)  # woken by its phase changes
    return rec


@pytest.mark.parametrize("http_server", SERVERS)
async def test_a_closed_stream_cancels_its_task(start_daemon, config, key, http_server):
    d = await start_daemon(_on(config(adapter_options={"token_delay_ms": 20}), http_server))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    stream = await client.chat.completions.create(
        model="mock", messages=CHAT, max_tokens=500, stream=True
    )
    async with stream:  # leaving the SDK's context closes the connection
        tid = stream.response.headers["x-llorch-task-id"]
        n = 0
        async for _ in stream:
            n += 1
            if n == 3:
                break
    rec = await _ended(d, tid)
    assert rec.state == "canceled"
    out = rec.tokens_out
    await asyncio.sleep(0.2)
    assert rec.tokens_out == out < 500
    await client.close()


@pytest.mark.parametrize("http_server", SERVERS)
async def test_a_timed_out_whole_answer_cancels_its_task(start_daemon, config, key, http_server):
    d = await start_daemon(_on(config(adapter_options={"token_delay_ms": 20}), http_server))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="mock", messages=CHAT, max_tokens=500)
    await client.close()
    recs: list = []
    for _ in range(200):
        recs = [d.orch.tasks.get(t) for t in list(d.orch.tasks._tasks)]
        if recs and all(r is not None and r.terminal for r in recs):
            break
        await asyncio.sleep(0.01)
    assert [r.state for r in recs if r is not None] == ["canceled"]


def _race_tasks_now() -> list[str]:
    """The tasks of this loop that run a facade answer's worker or disconnect watcher."""
    names = []
    for t in asyncio.all_tasks():
        name = getattr(t.get_coro(), "__qualname__", "")
        if name.endswith(("pump", "answer", "_disconnected")):
            names.append(name)
    return names


@pytest.mark.parametrize("http_server", SERVERS)
async def test_a_streamed_answer_runs_in_its_request_task(start_daemon, config, key, http_server):
    """ORCH-2809: under orchestratord's servers a streamed answer and a whole answer hold
    no worker task and no watcher task of their own (the request's queue tells the
    disconnect), and a closed stream still cancels its task (ORCH-9113)."""
    d = await start_daemon(_on(config(adapter_options={"token_delay_ms": 20}), http_server))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key)
    stream = await client.chat.completions.create(
        model="mock", messages=CHAT, max_tokens=500, stream=True
    )
    async with stream:
        tid = stream.response.headers["x-llorch-task-id"]
        n = 0
        async for _ in stream:
            n += 1
            if n == 3:
                assert _race_tasks_now() == []
                break
    whole = asyncio.create_task(
        client.chat.completions.create(model="mock", messages=CHAT, max_tokens=5)
    )
    seen: list[list[str]] = []
    while not whole.done():
        seen.append(_race_tasks_now())
        await asyncio.sleep(0.005)
    assert (await whole).choices[0].message.content
    assert len(seen) > 3 and not any(seen)
    rec = await _ended(d, tid)
    assert rec.state == "canceled"
    await client.close()
