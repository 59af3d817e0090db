"""The mock adapter through the shared conformance suite (ORCH-4010, ORCH-4015).

The mock is an in-process engine: it is its own adapter, so the probes read
the adapter's counters. Faults that need a transport (unreachable, stall,
errors inside an HTTP stream, SSE framing) do not exist for it and are
reported as skips by the suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from llama_orch.adapters.mock import MockAdapter
from llama_orch.adapters.mock._text import token_text
from llama_orch.core.adapter_api import AdapterTarget, Capability, GenerateRequest, WorkerAdapter
from llama_orch.testing import (
    AdapterConformance,
    EngineUnderTest,
    Expectations,
    Fault,
    FaultCase,
    Probes,
)

OPTIONS = {
    "slots": 2,
    "ctx": 1024,
    "token_delay_ms": 1,
    "eos_after": 600,
    "engine_version": "mock-7",
    "model_digest": "sha256:mock",
}


def make(**extra: object) -> MockAdapter:
    return MockAdapter(
        AdapterTarget(replica_id="mock-0", model_ref="mock-model", options={**OPTIONS, **extra})
    )


def _mock(a: WorkerAdapter) -> MockAdapter:
    assert isinstance(a, MockAdapter)
    return a


async def generated(a: WorkerAdapter) -> float:
    return float(_mock(a).generated_tokens_total)


async def busy(a: WorkerAdapter) -> int:
    return _mock(a).live_producers


async def reference(a: WorkerAdapter, req: GenerateRequest) -> str:
    n = min(req.max_tokens, OPTIONS["eos_after"])
    return "".join(token_text(req.seed, req.prompt, i) for i in range(n))


@asynccontextmanager
async def loading() -> AsyncIterator[FaultCase]:
    yield FaultCase(adapter=make(fail="unready"))


@asynccontextmanager
async def reset() -> AsyncIterator[FaultCase]:
    a = make(fail="reset_after:3")
    # The mock holds back nothing without stop strings: 3 tokens reach the client.
    req = AdapterConformance.request(_EUT, max_tokens=10)
    yield FaultCase(
        adapter=a,
        request=req,
        expected_text="".join(token_text(req.seed, req.prompt, i) for i in range(3)),
        chained=False,
    )


_EUT = EngineUnderTest(
    engine="mock",
    make_adapter=make,
    expect=Expectations(
        slots=2,
        ctx=1024,
        engine_version="mock-7",
        model_digest="sha256:mock",
        model_ref="mock-model",
        # engine fields and embeddings are real-engine features (ORCH-9202, ORCH-9211)
        capabilities=frozenset(Capability)
        - {
            Capability.JSON_SCHEMA,
            Capability.LOGPROBS,
            Capability.EMBED,
            Capability.GRAMMAR,
            Capability.EMBED_ONLY,
            Capability.ENGINE_SLOTS,  # only with the engine_slots option (ORCH-2371)
        },
        eos_request=GenerateRequest(task_id="eos", prompt="hi", max_tokens=700, seed=1),
        greedy_at_zero_temperature=False,  # the mock's text is a hash of the seed
        metrics_fields=frozenset(
            {
                "requests_running",
                "requests_waiting",
                "prompt_tokens_total",
                "generated_tokens_total",
            }
        ),
        timeout_s=30,
    ),
    probes=Probes(generated_tokens_total=generated, busy_slots=busy, reference_text=reference),
    faults={Fault.LOADING: loading, Fault.RESET_MID_STREAM: reset},
)


class TestMockConformance(AdapterConformance):
    engine_label = "mock"

    @pytest.fixture
    def engine_under_test(self) -> EngineUnderTest:
        return _EUT
