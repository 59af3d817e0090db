"""The echo adapter through llama-orch's conformance suite (the plugin).

The engine is in-process, so the probes read the adapter's own counters.
"""

from __future__ import annotations

import pytest
from echo_adapter import EchoAdapter
from llama_orch.core.adapter_api import AdapterTarget, Capability, GenerateRequest, WorkerAdapter
from llama_orch.testing import AdapterConformance, EngineUnderTest, Expectations, Probes


def _echo(a: WorkerAdapter) -> EchoAdapter:
    assert isinstance(a, EchoAdapter)
    return a


async def generated(a: WorkerAdapter) -> float:
    return float(_echo(a).generated_tokens_total)


async def busy(a: WorkerAdapter) -> int:
    return len(_echo(a).running)


async def reference(a: WorkerAdapter, req: GenerateRequest) -> str:
    words = req.prompt.split()
    return "".join(" " + words[i % len(words)] for i in range(req.max_tokens))


class TestEchoConformance(AdapterConformance):
    engine_label = "echo-1.0"

    @pytest.fixture
    def engine_under_test(self) -> EngineUnderTest:
        return EngineUnderTest(
            engine="echo",
            make_adapter=lambda: EchoAdapter(AdapterTarget(replica_id="echo-0")),
            expect=Expectations(
                slots=4,
                ctx=2048,
                engine_version="echo-1.0",
                capabilities=frozenset({Capability.TOKENIZE, Capability.METRICS}),
                eos_request=GenerateRequest(
                    task_id="e", prompt="Say it once.", max_tokens=9, seed=1
                ),
                metrics_fields=frozenset({"requests_running", "generated_tokens_total"}),
            ),
            probes=Probes(
                generated_tokens_total=generated, busy_slots=busy, reference_text=reference
            ),
        )
