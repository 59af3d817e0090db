"""The placement bench's workload (ORCH-2360, ORCH-2363): multi-turn chat sessions
of several tenants sharing a system prompt, realistic user turns, seeded think time.

Used by ``bench/prefix_placement.py``; split out of it (behaviour unchanged).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import aiohttp
from llama_orch.core.sse import SSEParser

TOPICS = (
    "gardening", "bicycles", "bread", "rivers", "chess", "owls", "maps", "tea",
)  # fmt: skip
QUESTIONS = (
    "Give me one short tip about {t}.",
    "Why does that matter for {t}?",
    "Name a common mistake with {t}.",
    "Summarise our talk about {t} in one line.",
    "One more fact about {t}, please.",
    "What should a beginner in {t} read first?",
)


CONTEXT = (
    "I tried a few things already and read two articles, but they disagreed.",
    "My budget is small and I only have about an hour on weekends for this.",
    "A friend told me the opposite last week, so now I am not sure what to believe.",
    "I would like an answer I can act on today, with the reason behind it.",
    "Last time I followed generic advice it did not work in my situation at all.",
    "I live in a small flat in a rainy city, if that changes anything.",
    "Please assume I am a complete beginner and explain any term you use.",
    "I keep notes of what you say, so numbered steps would help me a lot.",
    "My neighbour has done this for years and swears by the old-fashioned way.",
    "I also care about doing it safely and without wasting material.",
)


def user_message(tenant: int, turn: int, topic: str, target_tokens: int) -> str:
    """A user turn of about ``target_tokens`` tokens (0: the bare one-line question of
    sessions 2-5): the question, then context sentences picked per tenant and turn,
    so no two sessions share a user message."""
    question = QUESTIONS[turn % len(QUESTIONS)].format(t=topic)
    if target_tokens <= 0:
        return question
    rng = random.Random(tenant * 1000 + turn)
    parts = [question]
    size = len(question)
    while size < target_tokens * 4.2:  # plain English: ~4.2 chars per SmolLM2 token
        sentence = rng.choice(CONTEXT)
        parts.append(sentence)
        size += len(sentence) + 1
    return " ".join(parts)


def system_prompt(nonce: str, target_tokens: int) -> str:
    """About ``target_tokens`` tokens of house rules (SmolLM2 on this text: ~3.9 chars per
    token, measured with the engine's /tokenize; 4.5 gave 1,149 tokens for 1,000)."""
    rules = [
        f"Rule {n}: answer politely, stay on topic, keep each answer short and concrete, "
        f"avoid speculation, cite the rule number {n} when a user asks why."
        for n in range(1, 400)
    ]
    text = f"Session {nonce}. You are the help desk assistant of a small library. "
    out = [text]
    size = len(text)
    for r in rules:
        if size >= target_tokens * 3.9:
            break
        out.append(r)
        size += len(r) + 1
    return "\n".join(out)


async def conversation(
    http: aiohttp.ClientSession,
    url: str,
    key: str,
    tenant: int,
    system: str,
    turns: int,
    max_tokens: int,
    user_tokens: int,
    think_ms: float,
    after: asyncio.Event | None,
    started: asyncio.Event,
    out: list[dict[str, Any]],
    sessions: int = 1,
) -> None:
    if after is not None:  # the previous tenant's first prompt is in an engine's cache
        await after.wait()
    think = random.Random(7919 * tenant + 1)  # the same think times for every policy
    headers = {"Authorization": f"Bearer {key}"}
    for k in range(sessions):  # ORCH-2368: the tenant's next session after its last turn
        if k:
            await asyncio.sleep(think.expovariate(1000.0 / think_ms) if think_ms > 0 else 0)
        topic = TOPICS[(tenant + 3 * k) % len(TOPICS)]
        session = f"00000000-0000-4000-8000-{k:04d}{tenant:08d}"
        messages: list[dict[str, str]] = [{"role": "system", "content": system}]
        for turn in range(turns):
            msg = user_message(tenant, k * turns + turn, topic, user_tokens)
            messages.append({"role": "user", "content": msg})
            rec = await _turn(http, url, headers, messages, max_tokens, session, tenant, started)
            out.append(rec | {"turn": turn, "session": k})
            if think_ms > 0 and turn + 1 < turns:  # the user reads the answer, then types
                await asyncio.sleep(think.expovariate(1000.0 / think_ms))


async def _turn(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    messages: list[dict[str, str]],
    max_tokens: int,
    session: str,
    tenant: int,
    started: asyncio.Event,
) -> dict[str, Any]:
    """One turn: submit, stream, record; the answer is appended to ``messages``."""
    body = {
        "workload": "chat",
        "messages": messages,
        "max_tokens": max_tokens,
        "session_id": session,
        "temperature": 0.0,
        "seed": tenant,
    }
    t0 = time.monotonic()
    async with http.post(url + "/v1/tasks", json=body, headers=headers) as r:
        payload = await r.json()
        if r.status != 202:
            raise RuntimeError(f"submit refused {r.status}: {payload}")
    tid = payload["task_id"]
    rec: dict[str, Any] = {"tenant": tenant, "task_id": tid, "t_submit": t0}
    text: list[str] = []
    parser = SSEParser()
    async with http.get(f"{url}/v1/tasks/{tid}/stream", headers=headers) as r:
        async for chunk in r.content.iter_any():
            for m in parser.feed(chunk):
                data = json.loads(m.data)
                if m.event == "started":
                    rec["replica_id"] = data["replica_id"]
                elif m.event == "token":
                    if "ttft_ms" not in rec:
                        rec["ttft_ms"] = (time.monotonic() - t0) * 1000
                        started.set()
                    text.append(data["t"])
                elif m.event == "end":
                    rec |= {"tokens_out": data["tokens_out"], "tokens_in": data["tokens_in"]}
                elif m.event == "error":
                    rec["error"] = data["code"]
                    started.set()
    rec["done_ms"] = (time.monotonic() - t0) * 1000
    messages.append({"role": "assistant", "content": "".join(text)})
    return rec


async def drive(
    url: str, keys: list[str], systems: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    started = [asyncio.Event() for _ in range(args.tenants)]
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(
            *(
                conversation(
                    http,
                    url,
                    keys[i],
                    i,
                    systems[i % len(systems)],
                    args.turns,
                    args.max_tokens,
                    args.user_tokens,
                    args.think_ms,
                    started[i - 1] if i else None,
                    started[i],
                    out,
                    args.sessions,
                )
                for i in range(args.tenants)
            )
        )
    return out
