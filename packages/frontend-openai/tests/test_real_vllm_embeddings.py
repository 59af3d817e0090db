"""Embeddings on a vLLM pool (ORCH-9280..9282): the pool option ``embeddings: true``
makes the embedded pool manager start vLLM (CPU) with its pooling runner on the
SmolLM2 causal model (``--runner pooling --convert embed``); the replica passes its
self-tests by embedding (it generates nothing), and the unmodified ``openai`` SDK and
LangChain's ``OpenAIEmbeddings`` get vectors through ``/v1/embeddings``. One vLLM
start (30-60 s on a quiet machine), so one test."""

from __future__ import annotations

import asyncio
import math
import time

import msgspec
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from llama_orch.core.config import Config
from llama_orch.orchestratord.auth import hash_key
from llama_orch.testing_engines.python_engines import VLLM_ONE_WORKER_ENV, VLLM_ONE_WORKER_FLAGS

pytestmark = pytest.mark.real_engine

SMOLLM2 = "pypi:smollm2-135m-instruct-q4_1"
HIDDEN = 576  # SmolLM2-135M's hidden size: one pooled vector per input


def _config(key: str) -> Config:
    return msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 2.0},
            "auth": {
                "enabled": True,
                "keys": [{"id": "t", "role": "tenant", "tenant": "acme", "hash": hash_key(key)}],
            },
            "allow_cpu_inference": True,
            "pools": [
                {
                    "id": "embed",
                    "engine": "vllm-http",
                    "model": SMOLLM2,
                    "embeddings": True,
                    "ctx": 512,
                    "slots": 2,
                    "threads": 2,
                    "startup_timeout_s": 300,
                    # ORCH-6243: the model worker inside the engine core (~18 s less start)
                    "engine_flags": list(VLLM_ONE_WORKER_FLAGS),
                    "launch": {"env": VLLM_ONE_WORKER_ENV},
                }
            ],
        },
        Config,
    )


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
    )


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    )


def _langchain(base: str, key: str) -> list[list[float]]:
    # check_embedding_ctx_length=False: send the texts, not tiktoken token ids (which
    # mean nothing to this model and need a download)
    emb = OpenAIEmbeddings(
        base_url=base,
        api_key=key,
        model="embed",
        check_embedding_ctx_length=False,  # type: ignore[arg-type]
    )
    return emb.embed_documents(["red green blue", "a cat sat"])


@pytest.mark.timeout(600)
async def test_embeddings_on_a_launched_vllm_pooling_pool(
    start_daemon, key, vllm_engine, vllm_model
):
    """ORCH-9280..9283: launched with the pooling runner, self-tested by embedding, served
    to the openai SDK (base64 default and float) and LangChain; generation refused."""
    d = await start_daemon(_config(key))
    pool = d.orch.pools["embed"]
    t0 = time.monotonic()
    while not pool.ready_replicas() or d.orch.self_tests.running:
        assert time.monotonic() - t0 < 420, [r.last_error for r in pool.states.values()]
        await asyncio.sleep(0.25)
    (report,) = d.orch.self_tests.reports.values()
    decode = next(c for c in report.checks if c.name == "decode")
    assert report.passed and decode.detail == f"embedded ({HIDDEN} dimensions)", report
    client = openai.AsyncOpenAI(base_url=d.base, api_key=key, max_retries=0)
    try:
        texts = ["red green blue", "a cat sat", "red green blue"]
        got = await client.embeddings.create(model="embed", input=texts)  # base64 on the wire
        vectors = [e.embedding for e in got.data]
        assert [e.index for e in got.data] == [0, 1, 2] and len(vectors[0]) == HIDDEN
        # the same text in another batch position: equal up to bfloat16 noise (seen: 3e-3
        # absolute); another text: clearly apart
        assert _cos(vectors[0], vectors[2]) > 0.999 > _cos(vectors[0], vectors[1]) + 0.01
        assert got.usage.prompt_tokens > 6
        floats = await client.embeddings.create(
            model="embed", input="red green blue", encoding_format="float"
        )
        assert _cos(floats.data[0].embedding, vectors[0]) > 0.999
        # ORCH-9280: the pool generates nothing: a chat request is refused naming model
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(
                model="embed", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert err.value.body["param"] == "model"  # type: ignore[index]
        docs = await asyncio.to_thread(_langchain, d.base, key)
        assert len(docs) == 2 and _cos(docs[0], vectors[0]) > 0.999
        page = d.orch.metrics.render().decode()
        assert _metric(page, "embeddings_total", api="openai", pool_id="embed") == 3
    finally:
        await client.close()
