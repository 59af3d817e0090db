"""Preload checks before an engine is started (ORCH-POOL-3018).

The model file was verified by provisioning (ORCH-POOL-3003); here we check
that the host can hold it: host RAM from ``/proc/meminfo`` (``MemAvailable``)
and, when NVIDIA GPUs are present and ``nvidia-ml-py`` is installed, free
VRAM of every device in the pool's mask through NVML. A failed check raises
:class:`PreloadError`; the supervisor retries with backoff.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .errors import PreloadError

__all__ = ["check_gpu_headroom", "check_ram_headroom", "mem_available_bytes", "preload_check"]

_MIB = 1 << 20


def mem_available_bytes(meminfo: str) -> int | None:
    """``MemAvailable`` from the text of ``/proc/meminfo``, in bytes."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            return int(parts[1]) * 1024  # the kernel reports kB
    return None


def check_ram_headroom(model_bytes: int, factor: float, meminfo: str) -> None:
    if factor <= 0:
        return
    available = mem_available_bytes(meminfo)
    if available is None:
        return  # not Linux or an odd kernel: nothing to check against
    need = int(model_bytes * factor)
    if available < need:
        raise PreloadError(
            f"not enough host RAM to load the model: MemAvailable {available // _MIB} MiB "
            f"< model {model_bytes // _MIB} MiB x ram_headroom_factor {factor:g} "
            f"= {need // _MIB} MiB"
        )


def _load_nvml() -> Any | None:
    try:
        return importlib.import_module("pynvml")  # the nvidia-ml-py distribution
    except ImportError:
        return None


def check_gpu_headroom(devices: str, model_bytes: int, nvml: Any | None = None) -> None:
    """Every device of the mask needs ``model_bytes`` free (a conservative bound)."""
    nvml = nvml if nvml is not None else _load_nvml()
    if nvml is None:
        return
    try:
        nvml.nvmlInit()
    except Exception:  # no driver, no GPU: nothing to check
        return
    try:
        for dev in (d.strip() for d in devices.split(",") if d.strip()):
            handle = nvml.nvmlDeviceGetHandleByIndex(int(dev))
            free = int(nvml.nvmlDeviceGetMemoryInfo(handle).free)
            if free < model_bytes:
                raise PreloadError(
                    f"not enough VRAM on GPU {dev}: {free // _MIB} MiB free "
                    f"< model {model_bytes // _MIB} MiB"
                )
    finally:
        nvml.nvmlShutdown()


def preload_check(
    model_path: Path,
    *,
    ram_headroom_factor: float,
    devices: str | None,
    meminfo_path: Path = Path("/proc/meminfo"),
    nvml: Any | None = None,
) -> None:
    # A directory (HF model, model repository) weighs what its files weigh.
    size = (
        sum(p.stat().st_size for p in model_path.rglob("*") if p.is_file())
        if model_path.is_dir()
        else model_path.stat().st_size
    )
    try:
        meminfo = meminfo_path.read_text()
    except OSError:
        meminfo = ""
    if devices:
        # Weights live in VRAM; the host needs only a fraction of them.
        check_gpu_headroom(devices, size, nvml)
    else:
        check_ram_headroom(size, ram_headroom_factor, meminfo)
