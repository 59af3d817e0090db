"""LlamaServerSpec: the exact command line and environment of a replica."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_orch.pool_managerd.engine import LlamaServerSpec, free_port


def _spec(**kw: object) -> LlamaServerSpec:
    return LlamaServerSpec(
        binary=Path("/opt/llama-server"), model_path=Path("/m/x.gguf"), port=4242, **kw
    )  # type: ignore[arg-type]


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_command_carries_binary_model_port_slots_and_total_ctx() -> None:
    cmd = _spec(
        slots=3, ctx_per_slot=1024, threads=2, alias="pypi:m", extra_flags=("--temp", "0")
    ).command()
    assert cmd[0] == "/opt/llama-server"
    assert _flag(cmd, "--host") == "127.0.0.1"
    assert _flag(cmd, "--port") == "4242"
    assert _flag(cmd, "-m") == "/m/x.gguf"
    assert _flag(cmd, "-c") == "3072"  # llama-server splits -c across the -np slots
    assert _flag(cmd, "-np") == "3"
    assert _flag(cmd, "--threads") == "2"
    assert _flag(cmd, "--alias") == "pypi:m"
    assert "--metrics" in cmd and "--slots" in cmd
    assert "-nocb" not in cmd
    assert cmd[-2:] == ["--temp", "0"]  # engine_flags come last so they can override


def test_command_defaults_and_no_continuous_batching() -> None:
    cmd = _spec(continuous_batching=False).command()
    assert "-nocb" in cmd
    assert "--threads" not in cmd and "--alias" not in cmd
    assert _spec().base_url == "http://127.0.0.1:4242"


def test_embeddings_pool_starts_the_engine_with_embeddings_on() -> None:
    """ORCH-9211: one vector per input needs a pooling type (mean) next to --embeddings;
    the pool's own engine_flags still come last."""
    cmd = _spec(embeddings=True, extra_flags=("--pooling", "cls")).command()
    assert "--embeddings" in cmd and _flag(cmd, "--pooling") == "mean"
    assert cmd[-2:] == ["--pooling", "cls"]
    assert "--embeddings" not in _spec().command()


@pytest.mark.parametrize(("devices", "visible"), [(None, ""), ("0", "0"), ("1,3", "1,3")])
def test_env_applies_the_device_mask(
    devices: str | None, visible: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-POOL-3006: the mask is always set; no mask hides every GPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("LLORCH_TEST_MARKER", "kept")
    env = _spec(devices=devices).env()
    assert env["CUDA_VISIBLE_DEVICES"] == visible
    assert env["LLORCH_TEST_MARKER"] == "kept"


def test_free_port_is_bindable() -> None:
    assert 0 < free_port() < 65536
