"""Mock adapter: entry point, props, determinism, tokenize, metrics (ORCH-3001..3009)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from llama_orch.adapters.mock import BOS_ID, MockAdapter
from llama_orch.core.adapter_api import (
    AdapterEvent,
    AdapterTarget,
    Capability,
    Finished,
    GenerateRequest,
    TokenChunk,
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


@pytest.mark.parametrize(
    "options",
    [{"slots": 0}, {"fail": "explode"}, {"fail": "reset_after:x"}, {"bogus": 1}, {"slots": "two"}],
)
def test_bad_options_fail_loudly(options: dict[str, object]) -> None:
    with pytest.raises(InvalidParams):
        make(**options)


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


async def test_chat_template_is_deterministic() -> None:
    a = make()
    prompt = await a.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    )
    assert prompt == "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    with pytest.raises(InvalidParams):
        await a.apply_chat_template([{"role": "user"}])
