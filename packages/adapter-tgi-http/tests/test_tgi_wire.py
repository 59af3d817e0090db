"""TGI specifics: request mapping, stream decoding, health (ORCH-4017, ORCH-3010)."""

from __future__ import annotations

import json

import msgspec
import pytest
from aiohttp import web
from llama_orch.adapters.tgi_http import GenerateStream, TgiHttpAdapter, generate_parameters
from llama_orch.core.adapter_api import (
    AdapterTarget,
    Finished,
    GenerateRequest,
    TokenChunk,
    load_adapter_class,
)
from llama_orch.core.errors import InvalidParams, PoolUnready, WorkerReset
from llama_orch.testing.fake_http import FakeHTTPEngine


def req(**kw: object) -> GenerateRequest:
    fields: dict[str, object] = {"task_id": "t", "prompt": "hi", "max_tokens": 8, "seed": 5}
    fields.update(kw)
    return GenerateRequest(**fields)  # type: ignore[arg-type]


def test_entry_point() -> None:
    assert load_adapter_class("tgi-http") is TgiHttpAdapter


def test_greedy_sends_no_warper_and_no_temperature() -> None:
    """ORCH-4017: TGI rejects temperature 0 and samples when any warper is set."""
    body = msgspec.to_builtins(generate_parameters(req(temperature=0.0, top_k=40, top_p=0.9)))
    assert body == {"max_new_tokens": 8, "details": True, "do_sample": False}


def test_sampling_maps_seed_and_drops_out_of_range_warpers() -> None:
    body = msgspec.to_builtins(
        generate_parameters(
            req(temperature=0.7, top_k=0, top_p=1.0, seed=-1, repeat_penalty=1.1, stop=("\n",))
        )
    )
    assert body == {
        "max_new_tokens": 8,
        "details": True,
        "do_sample": True,
        "seed": 2**64 - 1,  # u64 on the wire
        "temperature": 0.7,
        "repetition_penalty": 1.1,
        "stop": ["\n"],
    }


def ev(body: dict[str, object]) -> bytes:
    return b"data:" + json.dumps(body).encode() + b"\n\n"


@pytest.mark.parametrize(
    ("finish", "reason"), [("eos_token", "eos"), ("stop_sequence", "stop"), ("length", "length")]
)
def test_finish_reason_mapping(finish: str, reason: str) -> None:
    s = GenerateStream()
    out = s.feed(
        ev({"token": {"id": 1, "text": " a", "special": False}, "generated_text": None})
        + ev(
            {
                "token": {"id": 2, "text": "</s>", "special": True},
                "generated_text": " a",
                "details": {"finish_reason": finish, "generated_tokens": 2, "input_length": 4},
            }
        )
    )
    assert out == [
        TokenChunk(" a", 1),
        Finished(reason=reason, tokens_generated=2, prompt_tokens=4),
    ]


def test_validation_error_in_200_stream_is_invalid_params_before_tokens() -> None:
    s = GenerateStream()
    s.feed(
        ev(
            {
                "error": "Input validation error: `temperature` must be strictly positive",
                "error_type": "validation",
            }
        )
    )
    assert isinstance(s.failure, InvalidParams)
    s2 = GenerateStream()
    s2.feed(
        ev({"token": {"id": 1, "text": " a"}, "generated_text": None})
        + ev({"error": "boom", "error_type": "generation"})
    )
    assert isinstance(s2.failure, WorkerReset) and "boom" in s2.failure.message


async def test_unhealthy_is_live_not_ready_and_503_is_pool_unready() -> None:
    """ORCH-3003: TGI's documented unhealthy answer."""

    async def unhealthy(request: web.Request) -> web.Response:
        return web.json_response({"error": "unhealthy", "error_type": "healthcheck"}, status=503)

    routes = {"GET /health": unhealthy, "POST /generate_stream": unhealthy}
    async with FakeHTTPEngine(routes) as fake:
        a = TgiHttpAdapter(AdapterTarget(replica_id="x", base_url=fake.base_url))
        try:
            h = await a.health()
            assert h.live and not h.ready and h.detail == "unhealthy"
            with pytest.raises(PoolUnready):
                async for _ in a.generate(req()):
                    pass
        finally:
            await a.aclose()
