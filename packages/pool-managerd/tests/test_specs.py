"""Command and environment construction of the vLLM, TGI and Triton launch specs."""

from __future__ import annotations

from pathlib import Path

from llama_orch.pool_managerd.specs import TgiSpec, TritonSpec, VllmSpec, device_count


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_vllm_command_and_env() -> None:
    """ORCH-POOL-3020, ORCH-POOL-3006: vLLM flags; GPU mask applied, TP = devices."""
    spec = VllmSpec(
        Path("/m/smol"), 8001, served_model_name="smol", max_model_len=1024,
        max_num_seqs=4, devices="0,1", python="py", extra_flags=("--enforce-eager",),
    )  # fmt: skip
    cmd = spec.command()
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(cmd, "--model") == "/m/smol" and _flag(cmd, "--port") == "8001"
    assert _flag(cmd, "--host") == "127.0.0.1" and _flag(cmd, "--max-model-len") == "1024"
    assert _flag(cmd, "--max-num-seqs") == "4" and _flag(cmd, "--dtype") == "auto"
    assert _flag(cmd, "--served-model-name") == "smol"
    assert _flag(cmd, "--tensor-parallel-size") == "2" and cmd[-1] == "--enforce-eager"
    assert spec.env()["CUDA_VISIBLE_DEVICES"] == "0,1" and spec.base_url == "http://127.0.0.1:8001"
    cpu = VllmSpec(Path("/m"), 1)
    assert "--tensor-parallel-size" not in cpu.command()
    assert cpu.env()["CUDA_VISIBLE_DEVICES"] == "" and cpu.env()["VLLM_TARGET_DEVICE"] == "cpu"


def test_tgi_command_and_env() -> None:
    """ORCH-POOL-3020: TGI launcher flags; one shard per device of the mask."""
    spec = TgiSpec("/m/smol", 3000, 9000, max_total_tokens=1024, devices="2,3,5")
    cmd = spec.command()
    assert cmd[0] == "text-generation-launcher" and _flag(cmd, "--model-id") == "/m/smol"
    assert _flag(cmd, "--hostname") == "127.0.0.1" and _flag(cmd, "--port") == "3000"
    assert _flag(cmd, "--prometheus-port") == "9000"
    assert _flag(cmd, "--max-input-tokens") == "1023" and _flag(cmd, "--max-total-tokens") == "1024"
    assert _flag(cmd, "--num-shard") == "3" and spec.env()["CUDA_VISIBLE_DEVICES"] == "2,3,5"


def test_triton_command_and_env() -> None:
    """ORCH-POOL-3020: tritonserver flags; HTTP only on loopback, strict readiness."""
    spec = TritonSpec(Path("/repo"), 8000, 8002, extra_flags=("--log-verbose", "1"))
    cmd = spec.command()
    assert cmd[0] == "tritonserver" and _flag(cmd, "--model-repository") == "/repo"
    assert _flag(cmd, "--http-address") == "127.0.0.1" and _flag(cmd, "--http-port") == "8000"
    assert _flag(cmd, "--allow-grpc") == "false" and _flag(cmd, "--metrics-port") == "8002"
    assert _flag(cmd, "--strict-readiness") == "true" and cmd[-2:] == ["--log-verbose", "1"]
    assert spec.env()["CUDA_VISIBLE_DEVICES"] == "" and spec.base_url == "http://127.0.0.1:8000"


def test_device_count() -> None:
    assert device_count(None) == 0 and device_count("") == 0 and device_count("0, 1") == 2
