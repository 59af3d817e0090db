"""ORCH-2793: under orchestratord's server an open facade answer runs in its request's
own task: no task of the facade's per answer (the disconnect is told by the request's
queue); a client that goes away still cancels its task (ORCH-9113: test_retry_contract.py).
"""

from __future__ import annotations

import asyncio

import openai
from llama_orch.frontends.openai import _common

CHAT = [{"role": "user", "content": "hello there"}]


def _facade_tasks() -> list[str]:
    """The running tasks whose coroutine is one of the facades' shared module."""
    out = []
    for t in asyncio.all_tasks():
        code = getattr(t.get_coro(), "cr_code", None)
        if code is not None and code.co_filename == _common.__file__:
            out.append(code.co_qualname)
    return out


async def test_an_open_stream_has_no_task_of_the_facade(start_daemon, config, key):
    d = await start_daemon(config(adapter_options={"token_delay_ms": 20}))
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
                # the answer is open: its writer waits in the request's task
                assert _facade_tasks() == []
                break
    rec = d.orch.tasks.get(tid)
    assert rec is not None
    for _ in range(200):
        if rec.terminal:
            break
        await asyncio.sleep(0.01)
    assert rec.state == "canceled"  # the disconnect still cancels (ORCH-9113)
    await client.close()


async def test_a_whole_answer_waits_in_the_request_task(start_daemon, config, key):
    d = await start_daemon(config(adapter_options={"token_delay_ms": 20}))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    call = asyncio.create_task(
        client.chat.completions.create(model="mock", messages=CHAT, max_tokens=20)
    )
    for _ in range(200):  # until the task is running
        if any(r.state == "running" for r in d.orch.tasks.records()):
            break
        await asyncio.sleep(0.01)
    assert _facade_tasks() == []
    answer = await call
    assert answer.choices[0].finish_reason == "length"
    await client.close()
