"""The conformance suite against the triton adapter and a **real Triton 2.51**
(nvidia-pytriton 0.7.0) serving a decoupled model that wraps a real
llama-server with SmolLM2-135M (ORCH-4070..ORCH-4074).

Cancel is verified from the client side only (no engine-side probe): Triton
does not tell a Python model about an HTTP disconnect. Faults the real
Triton cannot produce on demand come from ``conftest.py``; the error inside a
200 stream is real (the model raises after two responses).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from llama_orch.adapters.triton import TritonAdapter
from llama_orch.core.adapter_api import AdapterTarget, Capability, GenerateRequest, WorkerAdapter
from llama_orch.testing import (
    AdapterConformance,
    EngineUnderTest,
    Expectations,
    Fault,
    FaultCase,
    Probes,
)

pytestmark = pytest.mark.real_engine

CHAT_EOS = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
FAIL_PROMPT = "FAIL_AFTER=2\nOnce upon a time, in a small village by the sea,"


def engine_ctx(triton) -> int:  # type: ignore[no-untyped-def]
    """The per-slot context of the engine behind the model, as that engine reports it
    (llama-server may give a slot more than ``-c / --parallel``)."""
    props = triton.llama.get_json("/props")
    return int(props["default_generation_settings"]["n_ctx"])


def make_adapter(triton, **options: object) -> TritonAdapter:  # type: ignore[no-untyped-def]
    opts: dict[str, object] = {
        "model": triton.model,
        "ctx": engine_ctx(triton),
        "slots": triton.llama.spec.slots,
        "metrics_url": triton.metrics_url + "/metrics",
        "access_token": triton.access_token,
        # A cancelled generation runs to its end inside the model (README), and
        # on a loaded machine the next request may wait for it.
        "idle_timeout_s": 120,
        **options,
    }
    return TritonAdapter(
        AdapterTarget(
            replica_id="triton-0",
            base_url=triton.base_url,
            model_ref="pypi:smollm2-135m-instruct-q4_1",
            model_digest=triton.llama.model_digest,
            options=opts,
        )
    )


def _reference(llama_base: str):  # type: ignore[no-untyped-def]
    async def reference_text(adapter: WorkerAdapter, req: GenerateRequest) -> str:
        body = {
            "prompt": req.prompt,
            "n_predict": req.max_tokens,
            "seed": req.seed,
            "temperature": req.temperature,
            "top_k": req.top_k,
            "top_p": req.top_p,
            "min_p": req.min_p,
            "repeat_penalty": req.repeat_penalty,
            "cache_prompt": req.cache_prompt,
        }
        async with aiohttp.ClientSession() as s:
            async with s.post(llama_base + "/completion", json=body) as resp:
                return str((await resp.json())["content"])

    return reference_text


class TestTritonRealConformance(AdapterConformance):
    engine_label = "triton-2.51.0-pytriton-0.7.0-llama-server-smollm2-135m"

    @pytest.fixture
    def engine_under_test(self, triton_server, triton_fakes) -> EngineUnderTest:  # type: ignore[no-untyped-def]
        @contextlib.asynccontextmanager
        async def error_in_stream() -> AsyncIterator[FaultCase]:
            yield FaultCase(
                adapter=make_adapter(triton_server),
                request=GenerateRequest(
                    task_id="fail", prompt=FAIL_PROMPT, max_tokens=16, seed=1, temperature=0.0
                ),
            )

        return EngineUnderTest(
            engine="triton",
            make_adapter=lambda: make_adapter(triton_server),
            expect=Expectations(
                slots=triton_server.llama.spec.slots,
                ctx=engine_ctx(triton_server),
                engine_version="triton-2.51.0",
                model_digest=triton_server.llama.model_digest,
                capabilities=frozenset({Capability.METRICS, Capability.SEEDED_SAMPLING}),
                eos_request=GenerateRequest(
                    task_id="eos", prompt=CHAT_EOS, max_tokens=64, seed=1, temperature=0.0
                ),
                metrics_fields=frozenset({"requests_waiting"}),
                timeout_s=120,
            ),
            # No generated_tokens_total / busy_slots probes: a Python model is
            # not told about a disconnect, so cancel is client-side only.
            probes=Probes(reference_text=_reference(triton_server.llama.base_url)),
            faults={
                Fault.LOADING: triton_fakes.loading,
                Fault.UNREACHABLE: triton_fakes.unreachable,
                Fault.RESET_MID_STREAM: triton_fakes.reset_mid_stream,
                Fault.STALL_MID_STREAM: triton_fakes.stall_mid_stream,
                Fault.ERROR_IN_STREAM: error_in_stream,
                Fault.SSE_FRAMING: triton_fakes.sse_framing,
            },
        )
