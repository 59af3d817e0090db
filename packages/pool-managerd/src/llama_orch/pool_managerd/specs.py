"""Launch specifications of the other engines: vLLM, TGI and Triton (ORCH-POOL-3020).

Only command and environment construction lives here, unit-tested without the
engines; :class:`~llama_orch.pool_managerd.engine.LlamaServerSpec` is the one
the pool manager launches today. Every spec applies the pool's device mask
(``CUDA_VISIBLE_DEVICES``, empty for CPU: ORCH-POOL-3006), listens on the
loopback interface by default (ORCH-POOL-3014) and appends ``extra_flags``
last so that config can override a default.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TgiSpec", "TritonSpec", "VllmSpec", "device_count"]


def device_count(devices: str | None) -> int:
    return len([d for d in (devices or "").split(",") if d.strip()])


def _env(devices: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = devices or ""
    env.update(extra or {})
    return env


@dataclass(frozen=True, slots=True)
class VllmSpec:
    """``python -m vllm.entrypoints.openai.api_server`` on a Hugging Face model directory."""

    model_dir: Path
    port: int
    host: str = "127.0.0.1"
    served_model_name: str | None = None
    max_model_len: int = 2048
    max_num_seqs: int = 1  # parallel sequences (slots)
    dtype: str = "auto"
    seed: int = 0
    devices: str | None = None
    python: str = sys.executable
    extra_flags: tuple[str, ...] = ()

    def command(self) -> list[str]:
        cmd = [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--host", self.host,
            "--port", str(self.port),
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--dtype", self.dtype,
            "--seed", str(self.seed),
        ]  # fmt: skip
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        if (n := device_count(self.devices)) > 1:
            cmd += ["--tensor-parallel-size", str(n)]
        return cmd + list(self.extra_flags)

    def env(self) -> dict[str, str]:
        return _env(self.devices, {} if self.devices else {"VLLM_TARGET_DEVICE": "cpu"})

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TgiSpec:
    """``text-generation-launcher`` (TGI); one shard per device of the mask."""

    model_id: str
    port: int
    prometheus_port: int
    host: str = "127.0.0.1"
    max_total_tokens: int = 2048
    max_concurrent_requests: int = 128
    devices: str | None = None
    binary: str = "text-generation-launcher"
    extra_flags: tuple[str, ...] = ()

    def command(self) -> list[str]:
        cmd = [
            self.binary,
            "--model-id", self.model_id,
            "--hostname", self.host,
            "--port", str(self.port),
            "--prometheus-port", str(self.prometheus_port),
            "--max-input-tokens", str(self.max_total_tokens - 1),
            "--max-total-tokens", str(self.max_total_tokens),
            "--max-concurrent-requests", str(self.max_concurrent_requests),
        ]  # fmt: skip
        if (n := device_count(self.devices)) > 1:
            cmd += ["--num-shard", str(n)]
        return cmd + list(self.extra_flags)

    def env(self) -> dict[str, str]:
        return _env(self.devices)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TritonSpec:
    """``tritonserver`` on a model repository; HTTP only, strict readiness."""

    model_repository: Path
    http_port: int
    metrics_port: int
    host: str = "127.0.0.1"
    devices: str | None = None
    binary: str = "tritonserver"
    extra_flags: tuple[str, ...] = ()

    def command(self) -> list[str]:
        return [
            self.binary,
            "--model-repository", str(self.model_repository),
            "--http-address", self.host,
            "--http-port", str(self.http_port),
            "--allow-grpc", "false",
            "--metrics-port", str(self.metrics_port),
            "--model-control-mode", "none",
            "--strict-readiness", "true",
            "--exit-on-error", "true",
            *self.extra_flags,
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return _env(self.devices)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"
