"""Embeddings through the vLLM adapter against fake engines (ORCH-9280): a pooling
vLLM declares ``embed`` and ``embed_only`` and none of the generation capabilities,
and ``embed`` returns the vectors in input order; a generating vLLM (404) and
llama-server without ``--embeddings`` (501) declare no ``embed``; llama-server with
it keeps its generation capabilities. The real engine: frontend-openai's
``test_real_vllm_embeddings.py``."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from llama_orch.adapters.vllm_http import VllmHttpAdapter
from llama_orch.core.adapter_api import AdapterTarget, Capability
from llama_orch.core.errors import WorkerReset
from llama_orch.testing.fake_http import FakeHTTPEngine

MODEL = "fake-embed"


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"data": [{"id": MODEL, "max_model_len": 512}]})


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": "0.32.0"})


def _embeddings(seen: list[object], drop: bool = False):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        texts = body["input"]
        if not texts:
            return web.json_response({"error": {"message": "at least one prompt"}}, status=400)
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), float(i)]}
            for i, t in enumerate(texts)
        ][: -1 if drop else None]
        return web.json_response(
            {"object": "list", "data": data[::-1],  # out of order on purpose
             "usage": {"prompt_tokens": 7, "total_tokens": 7}}
        )  # fmt: skip

    return handler


def _adapter(url: str) -> VllmHttpAdapter:
    return VllmHttpAdapter(AdapterTarget(replica_id="r", base_url=url, options={"slots": 2}))


async def test_a_pooling_vllm_embeds_and_declares_no_generation() -> None:
    seen: list[object] = []
    routes = {
        "GET /v1/models": _models,
        "GET /version": _version,
        "POST /v1/embeddings": _embeddings(seen),
    }
    async with FakeHTTPEngine(routes) as fake:  # type: ignore[arg-type]
        adapter = _adapter(fake.base_url)
        try:
            props = await adapter.props()
            assert props.capabilities == {
                Capability.TOKENIZE,
                Capability.METRICS,
                Capability.EMBED,
                Capability.EMBED_ONLY,
            }
            await adapter.props()  # asked once per engine process
            out = await adapter.embed(["a", "bcd"])
            assert out.vectors == [[1.0, 0.0], [3.0, 1.0]] and out.prompt_tokens == 7
            assert seen == [
                {"model": MODEL, "input": []},
                {"model": MODEL, "input": ["a", "bcd"], "encoding_format": "float"},
            ]
        finally:
            await adapter.aclose()


async def test_a_short_answer_is_worker_reset() -> None:
    routes = {"GET /v1/models": _models, "POST /v1/embeddings": _embeddings([], drop=True)}
    async with FakeHTTPEngine(routes) as fake:  # type: ignore[arg-type]
        adapter = _adapter(fake.base_url)
        try:
            with pytest.raises(WorkerReset, match="1 vectors for 2 inputs"):
                await adapter.embed(["a", "b"])
        finally:
            await adapter.aclose()


@pytest.mark.parametrize(
    ("status", "vllm", "embed"),
    [(404, True, False), (501, False, False), (400, False, True)],
    ids=["generating-vllm", "llama-server-without-embeddings", "llama-server-with-embeddings"],
)
async def test_engines_that_generate_keep_their_capabilities(
    status: int, vllm: bool, embed: bool
) -> None:
    async def embeddings(request: web.Request) -> web.Response:
        return web.Response(status=status, text=json.dumps({"error": "x"}))

    async def no_version(request: web.Request) -> web.Response:
        return web.Response(status=404)

    routes = {
        "GET /v1/models": _models,
        "GET /version": _version if vllm else no_version,
        "POST /v1/embeddings": embeddings,
    }
    async with FakeHTTPEngine(routes) as fake:  # type: ignore[arg-type]
        adapter = _adapter(fake.base_url)
        try:
            caps = (await adapter.props()).capabilities
            assert Capability.SEEDED_SAMPLING in caps and Capability.EMBED_ONLY not in caps
            assert (Capability.EMBED in caps) is embed
            assert (Capability.JSON_SCHEMA in caps) is vllm
        finally:
            await adapter.aclose()
