"""A refusal by an admission policy names the policy through the facades too
(ORCH-9116, issue #16's ORCH-8522), driven by the unmodified SDKs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anthropic
import msgspec
import openai
import pytest
from llama_orch.core.policy_config import PoliciesConfig

CHAT = [{"role": "user", "content": "hello there"}]
REJECT_ALL = Path(__file__).resolve().parent / "fixtures" / "reject_all.wat"


def _with_reject_all(cfg):
    digest = hashlib.sha256(REJECT_ALL.read_bytes()).hexdigest()
    cfg.policies = msgspec.convert(
        {
            "modules": [{"name": "closed", "path": str(REJECT_ALL), "sha256": digest}],
            "admission": {"policy": "closed"},
        },
        PoliciesConfig,
    )
    return cfg


async def test_policy_rejection_carries_its_label_in_both_facades(start_daemon, config, key):
    d = await start_daemon(_with_reject_all(config()))
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    try:
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="mock", messages=CHAT, max_tokens=4)
    finally:
        await client.close()
    resp = info.value.response
    assert resp.headers["x-llorch-policy-label"] == "closed"
    assert "closed for the test" in info.value.message
    assert int(resp.headers["retry-after-ms"]) >= 1500  # the policy's hint is the base

    claude = anthropic.AsyncAnthropic(base_url=d.url, api_key=key, max_retries=0)
    try:
        with pytest.raises(anthropic.RateLimitError) as refused:
            await claude.messages.create(model="mock", max_tokens=4, messages=CHAT)
    finally:
        await claude.close()
    assert refused.value.response.headers["x-llorch-policy-label"] == "closed"
    assert len(d.orch.tasks) == 0  # nothing was enqueued
