#!/usr/bin/env python3
"""Build every distribution as a wheel and an sdist, then smoke-test them together (ORCH-6204).

    python3 tools/build_all.py                       # build into dist/, smoke-test in a tmp venv
    python3 tools/build_all.py --out DIR --no-smoke  # build only
    python3 tools/build_all.py --venv /opt/llama-orch  # install into that venv (the Dockerfile)

Step 1 runs ``uv build --all-packages --no-sources`` (the sdist first, then the
wheel built from that sdist, so an sdist missing a file fails here) and checks
that every ``packages/*/pyproject.toml`` produced exactly one wheel and one
sdist of the release version, each carrying ``LICENSE``. Step 2 creates a fresh
venv, installs all the wheels together (third-party dependencies from the
package index through the uv cache) and runs each console script's ``--help``
from that venv. Distributions are discovered by the glob, so a new package is
built and installed without touching this file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Dist", "build", "distributions", "smoke", "venv_install"]

ROOT = Path(__file__).resolve().parent.parent
# The console scripts a release must run from a clean install (issue #22).
SMOKE_COMMANDS = ("orchestratord", "pool-managerd", "llorch")


@dataclass(frozen=True)
class Dist:
    name: str  # llama-orch-core
    version: str
    scripts: tuple[str, ...]

    @property
    def stem(self) -> str:  # llama_orch_core-0.2.0 (the normalised file-name prefix)
        return f"{self.name.replace('-', '_')}-{self.version}"


def distributions(root: Path = ROOT) -> list[Dist]:
    out = []
    for pyproject in sorted(root.glob("packages/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        scripts = tuple(sorted(project.get("scripts", {})))
        out.append(Dist(project["name"], project["version"], scripts))
    return out


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def _uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        raise SystemExit("build_all: uv is not on PATH (python3 -m pip install uv)")
    return found


def _run(cmd: list[str], what: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout + proc.stderr


def _has_license(path: Path) -> bool:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith(".dist-info/licenses/LICENSE") for n in zf.namelist())
    with tarfile.open(path) as tf:
        return any(n.count("/") == 1 and n.endswith("/LICENSE") for n in tf.getnames())


def build(out: Path, root: Path = ROOT) -> list[Path]:
    """Wheels and sdists of every distribution in ``out``; raises when one is missing."""
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.whl"), *out.glob("*.tar.gz")]:
        old.unlink()
    _run([_uv(), "build", "--all-packages", "--no-sources", "-q", "-o", str(out)], "uv build", root)
    problems = []
    files: list[Path] = []
    for dist in distributions(root):
        wheel = sorted(out.glob(f"{dist.stem}-*.whl"))
        sdist = out / f"{dist.stem}.tar.gz"
        if len(wheel) != 1:
            problems.append(f"{dist.name}: {len(wheel)} wheels of {dist.version}")
            continue
        if not sdist.is_file():
            problems.append(f"{dist.name}: no sdist {sdist.name}")
            continue
        for f in (wheel[0], sdist):
            if not _has_license(f):
                problems.append(f"{f.name}: no LICENSE inside")
        files += [wheel[0], sdist]
    extra = {p.name for p in out.iterdir() if not p.name.startswith(".")} - {p.name for p in files}
    if extra:
        problems.append(f"unexpected files in {out}: {sorted(extra)}")
    if problems:
        raise RuntimeError("build_all: " + "; ".join(problems))
    return files


def venv_install(venv: Path, wheels: list[Path]) -> Path:
    """A fresh venv with every wheel installed together; returns its bin directory."""
    base = getattr(sys, "_base_executable", sys.executable)
    _run([_uv(), "venv", "-q", "--python", base, str(venv)], "uv venv", venv.parent)
    python = venv / "bin" / "python"
    cmd = [_uv(), "pip", "install", "-q", "--python", str(python), *map(str, wheels)]
    _run(cmd, "uv pip install (all wheels together)", venv.parent)
    return venv / "bin"


def smoke(bindir: Path, commands: tuple[str, ...] = SMOKE_COMMANDS) -> dict[str, str]:
    """``<command> --help`` from ``bindir``; returns each command's output."""
    out = {}
    for name in commands:
        exe = bindir / name
        if not exe.is_file():
            raise RuntimeError(f"{name} is not installed in {bindir}")
        out[name] = _run([str(exe), "--help"], f"{name} --help", bindir)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output directory")
    parser.add_argument("--no-smoke", action="store_true", help="build only")
    parser.add_argument("--venv", type=Path, help="install into this new venv and keep it")
    args = parser.parse_args(argv)
    files = build(args.out.resolve())
    for f in files:
        print(f"built {f.name}")
    if args.no_smoke:
        return 0
    wheels = [f for f in files if f.suffix == ".whl"]
    with tempfile.TemporaryDirectory(prefix="llorch-smoke-") as tmp:
        venv = args.venv.resolve() if args.venv else Path(tmp) / "venv"
        for name, text in smoke(venv_install(venv, wheels)).items():
            print(f"{name} --help: ok ({text.splitlines()[0] if text else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
