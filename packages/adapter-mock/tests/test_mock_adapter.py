"""Mock adapter: entry point, props, determinism, tokenize, metrics (ORCH-3001..3009)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from llama_orch.adapters.mock import BOS_ID, WORDS, MockAdapter
from llama_orch.core.adapter_api import (
    AdapterEvent,
    AdapterTarget,
    Capability,
    Finished,
    GenerateRequest,
    TokenChunk,
    load_adapter_class,
)
from llama_orch.core.errors import InvalidParams


def make(**options: object) -> MockAdapter:
    return MockAdapter(AdapterTarget(replica_id="r0", model_ref="m", options=options))


def req(
    task_id: str = "t1",
    *,
    prompt: str = "hello world",
    seed: int = 7,
    max_tokens: int = 16,
    stop: tuple[str, ...] = (),
) -> GenerateRequest:
    return GenerateRequest(
        task_id=task_id, prompt=prompt, max_tokens=max_tokens, seed=seed, stop=stop
    )


async def collect(it: AsyncIterator[AdapterEvent]) -> tuple[list[TokenChunk], Finished]:
    chunks: list[TokenChunk] = []
    finished: list[Finished] = []
    async for ev in it:
        assert not finished, "no event may follow Finished"
        if isinstance(ev, Finished):
            finished.append(ev)
        else:
            chunks.append(ev)
    assert len(finished) == 1, "exactly one Finished ends a stream"
    return chunks, finished[0]


def test_entry_point_loads_mock_adapter() -> None:
    """ORCH-3001: the adapter is found by its entry-point name."""
    assert load_adapter_class("mock") is MockAdapter


async def test_props_identify_mock_engine() -> None:
    """ORCH-3004: props come from options; engine can never look real."""
    a = make(slots=3, ctx=512, engine_version="mock-9", model_digest="d1")
    props = await a.props()
    assert props.engine == "mock"
    assert (props.slots, props.ctx) == (3, 512)
    assert (props.engine_version, props.model_digest, props.model_ref) == ("mock-9", "d1", "m")
    assert Capability.INTERRUPTIBLE_DECODE in props.capabilities
    assert {Capability.TOKENIZE, Capability.METRICS, Capability.SEEDED_SAMPLING} <= (
        props.capabilities
    )
    defaults = await make().props()
    assert (defaults.slots, defaults.ctx, defaults.engine_version, defaults.model_digest) == (
        1,
        2048,
        "mock-1",
        "mock-digest",
    )


async def test_health_ready_by_default() -> None:
    """ORCH-3003."""
    h = await make().health()
    assert h.live and h.ready


@pytest.mark.parametrize(
    "options",
    [{"slots": 0}, {"fail": "explode"}, {"fail": "reset_after:x"}, {"bogus": 1}, {"slots": "two"}],
)
def test_bad_options_fail_loudly(options: dict[str, object]) -> None:
    with pytest.raises(InvalidParams):
        make(**options)


async def test_same_seed_same_stream_different_seed_differs() -> None:
    """ORCH-3005 (seeded sampling): streams are a pure function of seed and prompt."""
    a, b = make(), make()
    chunks1, fin1 = await collect(a.generate(req(seed=1, max_tokens=24)))
    chunks2, fin2 = await collect(b.generate(req(seed=1, max_tokens=24)))
    chunks3, _ = await collect(a.generate(req(seed=2, max_tokens=24)))
    chunks4, _ = await collect(a.generate(req(seed=1, max_tokens=24, prompt="other prompt")))
    text = "".join(c.text for c in chunks1)
    assert text == "".join(c.text for c in chunks2)
    assert text != "".join(c.text for c in chunks3)
    assert text != "".join(c.text for c in chunks4)
    assert all(c.text.startswith(" ") and c.text[1:] in WORDS for c in chunks1)
    assert fin1 == fin2
    assert fin1.reason == "length" and fin1.tokens_generated == 24 == len(chunks1)
    assert fin1.prompt_tokens == 3  # BOS + "hello" + "world"


async def test_eos_after_ends_with_eos() -> None:
    chunks, fin = await collect(make(eos_after=5).generate(req(max_tokens=50)))
    assert (fin.reason, fin.tokens_generated, len(chunks)) == ("eos", 5, 5)
    # max_tokens below eos_after: the length limit wins
    _, fin = await collect(make(eos_after=5).generate(req(max_tokens=3)))
    assert (fin.reason, fin.tokens_generated) == ("length", 3)


async def test_stop_string_cuts_text_and_counts_held_tokens() -> None:
    """A stop string spanning tokens is removed; held-back tokens are still counted."""
    full_chunks, _ = await collect(make().generate(req(max_tokens=40)))
    full = "".join(c.text for c in full_chunks)
    # A stop string made of the 5th and 6th tokens, which span two tokens.
    stop = full_chunks[4].text + full_chunks[5].text
    chunks, fin = await collect(make().generate(req(max_tokens=40, stop=(stop,))))
    text = "".join(c.text for c in chunks)
    assert text == full[: full.find(stop)]
    assert fin.reason == "stop"
    assert fin.tokens_generated >= 6
    assert sum(c.n_tokens for c in chunks) <= fin.tokens_generated


async def test_context_overflow_is_invalid_params() -> None:
    """ORCH-3007: a prompt that fills the slot context is rejected like llama-server does."""
    a = make(ctx=8)
    with pytest.raises(InvalidParams, match="exceeds the available context size"):
        await collect(a.generate(req(prompt="w " * 7)))
    assert a.busy_slots == 0
    # Generation is capped by the context left after the prompt.
    _, fin = await collect(make(ctx=8).generate(req(prompt="w w", max_tokens=100)))
    assert (fin.reason, fin.tokens_generated) == ("length", 5)


async def test_tokenize_counts_words_plus_bos() -> None:
    """ORCH-3008: one id per whitespace word plus BOS, deterministic."""
    a = make()
    ids = await a.tokenize("the quick  brown\nfox")
    assert ids[0] == BOS_ID and len(ids) == 5
    assert ids == await make().tokenize("the quick brown fox")
    assert await a.tokenize("") == [BOS_ID]


async def test_metrics_count_prompt_and_generated_tokens() -> None:
    """ORCH-3009."""
    a = make()
    before = await a.metrics()
    assert (before.requests_running, before.generated_tokens_total) == (0, 0)
    await collect(a.generate(req(prompt="one two three", max_tokens=10)))
    await collect(a.generate(req(prompt="four", max_tokens=4)))
    after = await a.metrics()
    assert after.generated_tokens_total == 14
    assert after.prompt_tokens_total == 4 + 2
    assert after.requests_running == 0
    assert after.raw["mock:generated_tokens_total"] == 14


async def test_metrics_requests_running_during_generation() -> None:
    a = make(slots=2)
    it = a.generate(req(max_tokens=10))
    first = await anext(it)
    assert isinstance(first, TokenChunk)
    assert (await a.metrics()).requests_running == 1
    await it.aclose()
    assert (await a.metrics()).requests_running == 0


async def test_chat_template_is_deterministic() -> None:
    a = make()
    prompt = await a.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    )
    assert prompt == "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    with pytest.raises(InvalidParams):
        await a.apply_chat_template([{"role": "user"}])
