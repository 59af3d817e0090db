"""The test-support distribution: its plugins expose the fixture names the
suite uses, and the PyTriton app ships as a file (ORCH-4110)."""

from __future__ import annotations

import importlib.resources

import pytest
from _pytest.fixtures import FixtureFunctionDefinition
from llama_orch.testing_engines import llamacpp, python_engines
from llama_orch.testing_engines.llamacpp import real_engine_required

FIXTURES = {
    llamacpp: {
        "llama_server_binary",
        "smollm2_model",
        "qwen_model",
        "start_llama_server",
        "smollm2_server",
    },
    python_engines: {
        "vllm_engine",
        "vllm_model",
        "vllm_server",
        "pytriton_engine",
        "triton_server",
    },
}


@pytest.mark.parametrize("module", list(FIXTURES), ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_plugin_defines_the_fixture_names_the_suite_uses(module) -> None:
    found = {n for n, v in vars(module).items() if isinstance(v, FixtureFunctionDefinition)}
    assert FIXTURES[module] <= found, f"missing fixtures: {sorted(FIXTURES[module] - found)}"


def test_pytriton_app_ships_as_package_data() -> None:
    app = importlib.resources.files("llama_orch.testing_engines") / "_pytriton_app.py"
    assert app.is_file()
    assert "pytriton" in app.read_text()


def test_real_engine_required_follows_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUIRE_REAL_LLAMA", "1")
    assert real_engine_required()
    monkeypatch.setenv("REQUIRE_REAL_LLAMA", "0")
    assert not real_engine_required()
