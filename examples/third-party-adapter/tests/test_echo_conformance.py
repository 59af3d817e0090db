"""The echo adapter through llama-orch's conformance suite (the plugin).

Each test serves the echo engine in-process on 127.0.0.1 (a free port) and
stops it afterwards; the probes ask the engine's own ``/metrics``, not the
adapter, so cancel is proven on the engine side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from echo_adapter import EchoAdapter
from echo_adapter.server import EchoEngine, running
from llama_orch.core.adapter_api import AdapterTarget, Capability, GenerateRequest, WorkerAdapter
from llama_orch.core.prometheus import parse_prometheus
from llama_orch.testing import AdapterConformance, EngineUnderTest, Expectations, Probes


async def _sample(a: WorkerAdapter, name: str) -> float:
    assert isinstance(a, EchoAdapter)
    async with aiohttp.ClientSession() as http, http.get(a.base_url + "/metrics") as resp:
        return parse_prometheus(await resp.text())[name]


async def generated(a: WorkerAdapter) -> float:
    return await _sample(a, "echo_generated_tokens_total")


async def busy(a: WorkerAdapter) -> int:
    return int(await _sample(a, "echo_requests_running"))


async def reference(a: WorkerAdapter, req: GenerateRequest) -> str:
    words = req.prompt.split()
    return "".join(" " + words[i % len(words)] for i in range(req.max_tokens))


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    async with running(EchoEngine(slots=4, ctx=2048)) as url:
        yield url


class TestEchoConformance(AdapterConformance):
    engine_label = "echo-1.0"

    @pytest.fixture
    def engine_under_test(self, echo_url: str) -> EngineUnderTest:
        return EngineUnderTest(
            engine="echo",
            make_adapter=lambda: EchoAdapter(AdapterTarget(replica_id="echo-0", base_url=echo_url)),
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
