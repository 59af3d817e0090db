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


def test_session_vllm_runs_its_model_worker_in_the_engine_core(tmp_path, monkeypatch) -> None:
    """ORCH-6243: the session vLLM starts with the uni executor, V1 multiprocessing off
    (without it vLLM on the CPU turns `uni` back into a spawned worker process) and one
    OpenMP thread; its scratch files stay private (ORCH-4053) but for the shared
    model-info cache (ORCH-6244)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    scratch = tmp_path / "scratch"
    spec, env = python_engines.vllm_session_launch(tmp_path / "m", 8123, "/py", scratch, "vllm-x")
    cmd = spec.command()
    i = cmd.index("--distributed-executor-backend")
    assert cmd[i + 1] == "uni" and "--enforce-eager" in cmd
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and env["OMP_NUM_THREADS"] == "1"
    assert env["TMPDIR"] == str(scratch) and "VIRTUAL_ENV" not in env
    assert env["VLLM_CACHE_ROOT"] == str(scratch / "vllm-cache")
    shared = tmp_path / "user-cache" / "llama-orch" / "vllm-modelinfos" / "vllm-x"
    assert (scratch / "vllm-cache" / "modelinfos").resolve() == shared.resolve()
