"""Compile a C or Zig policy to a wasm32 core module with Zig's toolchain (ORCH-8530).

The toolchain is PyPI's ``ziglang`` (the ``build`` extra): no clang, no
Rust target, nothing fetched at build time. The flags keep the module small
and its *minimum* memory small: without ``-z stack-size`` the linker asks
for 16 MiB up front, and a store capped at 16 MiB could not even
instantiate it. C builds are freestanding (``c/llorch_policy.h`` needs no
libc); ``libc=True`` links wasi-libc as a reactor instead, which makes the
module import WASI, so its config must grant ``wasi: true``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

__all__ = ["STACK_SIZE", "BuildError", "build", "c_include_dir", "cached_build", "command"]

STACK_SIZE = 65536


class BuildError(RuntimeError):
    """The compiler is missing or rejected the source."""


def c_include_dir() -> Path:
    return Path(str(resources.files("llama_orch.policy_sdk") / "c"))


def command(source: Path, output: Path, *, libc: bool = False, opt: str = "-O2") -> list[str]:
    """The compiler command line for ``source`` (``.c`` or ``.zig``)."""
    zig = [sys.executable, "-m", "ziglang"]
    if source.suffix == ".zig":
        return [
            *zig,
            "build-exe",
            str(source),
            "-target",
            "wasm32-freestanding",
            "-fno-entry",
            "-rdynamic",
            "-O",
            "ReleaseSmall",
            "--stack",
            str(STACK_SIZE),
            f"-femit-bin={output}",
        ]
    if source.suffix != ".c":
        raise BuildError(f"{source}: only .c and .zig sources can be built")
    common = [opt, "-s", f"-I{c_include_dir()}", f"-Wl,-z,stack-size={STACK_SIZE}"]
    if libc:
        target = ["--target=wasm32-wasi", "-mexec-model=reactor"]
    else:
        target = ["--target=wasm32-freestanding", "-nostdlib", "-Wl,--no-entry"]
    return [*zig, "cc", *target, *common, "-o", str(output), str(source)]


def build(source: Path, output: Path, *, libc: bool = False, timeout_s: float = 300.0) -> Path:
    """Compile ``source`` to ``output``; raises :class:`BuildError` with the compiler's output."""
    try:
        import ziglang  # noqa: F401
    except ImportError as exc:
        raise BuildError(
            "building needs Zig's toolchain: pip install 'llama-orch-policy-sdk[build]'"
        ) from exc
    output.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        command(source, output, libc=libc),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"{source}: build failed\n{proc.stderr}{proc.stdout}")
    return output


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-orch" / "policies"


def cached_build(source: Path, *, libc: bool = False, cache_dir: Path | None = None) -> Path:
    """Build ``source`` once per content (source, header, flags): a cache hit is a file lookup."""
    h = hashlib.sha256(source.read_bytes())
    h.update((c_include_dir() / "llorch_policy.h").read_bytes())
    h.update(repr(command(Path("s" + source.suffix), Path("o"), libc=libc)[3:]).encode())
    out = (cache_dir or _cache_root()) / f"{source.stem}-{h.hexdigest()[:16]}.wasm"
    if not out.is_file():
        tmp = out.with_suffix(f".{os.getpid()}.tmp.wasm")
        build(source, tmp, libc=libc)
        tmp.replace(out)
    return out
