"""Install a distribution alone into a fresh venv and run its tests there (ORCH-4016).

Used by ``tools/tests/test_standalone_install.py`` and the third-party
adapter test; also runnable by hand::

    uv run python tools/standalone.py packages/adapter-tgi-http

Steps for one package directory:

1. build its wheel, and the wheels of the workspace distributions it or its
   ``test`` dependency group needs, with ``uv build --package X --no-sources``
   (cached under ``~/.cache/llama-orch/standalone/wheels/<name>-<source hash>``);
2. create a fresh venv and install **only the package** from those wheels
   (third-party dependencies such as aiohttp come from PyPI through the uv
   cache), then import every module it ships and load its adapters by
   entry-point name (ORCH-4111);
3. install the ``test`` dependency group, copy ``tests/`` to a scratch
   directory laid out like the repository (``packages/<dir>/tests``, plus the
   ``contracts/`` data its tests read; no source, so nothing of the workspace
   is importable) and run pytest with the workspace's pytest settings.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ROOT",
    "Package",
    "build_wheel",
    "clean_env",
    "install",
    "make_venv",
    "read_package",
    "run_package_tests",
    "wheels_for",
    "workspace_members",
]

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llama-orch"
WHEELS = CACHE / "standalone" / "wheels"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRAS = re.compile(r"^\s*[A-Za-z0-9][A-Za-z0-9._-]*\s*\[([^\]]*)\]")


def uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        raise RuntimeError("uv is not on PATH (install it: python3 -m pip install uv)")
    return found


def clean_env() -> dict[str, str]:
    """The environment for child processes: no workspace venv, no downloads of Pythons."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess[str]:
    # each step's hang guard (the standalone test's own timeout covers a queue of runs)
    proc = subprocess.run(
        cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def req_name(requirement: str) -> str:
    m = _NAME.match(requirement)
    assert m, f"unparseable requirement {requirement!r}"
    return m.group(1).lower().replace("_", "-")


@dataclass(frozen=True)
class Package:
    name: str
    path: Path
    dependencies: tuple[str, ...]
    test_group: tuple[str, ...]
    entry_points: tuple[str, ...]  # names in llama_orch.adapters
    extras: dict[str, tuple[str, ...]]  # [project.optional-dependencies]


def read_package(path: Path) -> Package:
    data = tomllib.loads((path / "pyproject.toml").read_text())
    project = data["project"]
    eps = project.get("entry-points", {}).get("llama_orch.adapters", {})
    return Package(
        name=project["name"],
        path=path,
        dependencies=tuple(project.get("dependencies", [])),
        test_group=tuple(data.get("dependency-groups", {}).get("test", [])),
        entry_points=tuple(eps),
        extras={k: tuple(v) for k, v in project.get("optional-dependencies", {}).items()},
    )


def workspace_members() -> dict[str, Package]:
    out = {}
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        pkg = read_package(pyproject.parent)
        out[pkg.name] = pkg
    return out


def _source_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if f.is_dir() or "__pycache__" in rel.parts or rel.parts[0] in ("tests", ".venv"):
            continue
        h.update(str(rel).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_wheel(pkg: Package) -> Path:
    """The package's wheel, built with ``--no-sources`` once per source state."""
    slot = WHEELS / f"{pkg.name}-{_source_hash(pkg.path)}"
    found = sorted(slot.glob("*.whl"))
    if found:
        return found[0]
    WHEELS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{pkg.name}-", dir=WHEELS))
    try:
        if pkg.path.is_relative_to(ROOT / "packages"):
            cmd = [uv(), "build", "--package", pkg.name, "--no-sources", "--wheel", "-o", str(tmp)]
            _run(cmd, ROOT, f"uv build {pkg.name}")
        else:  # a project outside the workspace (examples/third-party-adapter)
            cmd = [uv(), "build", "--no-sources", "--wheel", "-o", str(tmp), str(pkg.path)]
            _run(cmd, pkg.path, f"uv build {pkg.name}")
        try:
            tmp.rename(slot)  # atomic: a concurrent builder of the same state may win
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(slot.glob("*.whl"))[0]


def wheels_for(requirements: list[str], members: dict[str, Package]) -> list[Path]:
    """Wheels of every workspace distribution the requirements need, transitively."""
    todo = list(requirements)
    seen: set[str] = set()
    followed: set[tuple[str, str]] = set()
    while todo:
        req = todo.pop()
        name = req_name(req)
        if name not in members:
            continue
        # the extras a requirement names pull in their own workspace dependencies
        # (orchestratord[valkey] -> llama-orch-state-valkey)
        for extra in _EXTRAS.findall(req.split(";")[0]):
            for e in (x.strip() for x in extra.split(",")):
                if (name, e) not in followed:
                    followed.add((name, e))
                    todo.extend(members[name].extras.get(e, ()))
        if name in seen:
            continue
        seen.add(name)
        todo.extend(members[name].dependencies)
    return [build_wheel(members[n]) for n in sorted(seen)]


def make_venv(path: Path) -> Path:
    base = getattr(sys, "_base_executable", sys.executable)
    _run([uv(), "venv", "-q", "--python", base, str(path)], path.parent, "uv venv")
    return path / "bin" / "python"


def install(python: Path, requirements: list[str], wheels: list[Path]) -> None:
    """Install from the local wheels plus PyPI (through the uv cache)."""
    links: list[str] = []
    for d in sorted({w.parent for w in wheels}):
        links += ["--find-links", str(d)]
    cmd = [uv(), "pip", "install", "-q", "--python", str(python), *links, *requirements]
    _run(cmd, python.parent, "uv pip install")


def installed(python: Path) -> dict[str, str]:
    proc = _run(
        [uv(), "pip", "list", "--python", str(python), "--format", "freeze"],
        python.parent,
        "uv pip list",
    )
    return dict(line.split("==", 1) for line in proc.stdout.split() if "==" in line)


# Real-engine tests run in the workspace against real engines; workspace_only tests are
# long behaviour tests that prove nothing about packaging beyond the package's others.
STANDALONE_MARKEXPR = "not real_engine and not workspace_only"


_XDIST_OPTIONS = ("--numprocesses", "--dist")


def pytest_ini(path: Path) -> None:
    """The workspace's pytest settings, for a run outside the workspace."""
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    lines = ["[pytest]"]
    # a standalone venv has no pytest-xdist: its runs are one process (ORCH-6240)
    opts["addopts"] = [o for o in opts["addopts"] if o.split("=")[0] not in _XDIST_OPTIONS]
    for key in ("addopts", "filterwarnings", "markers"):
        lines.append(f"{key} =")
        lines += [f"    {v}" for v in opts[key]]
    for key in ("xfail_strict", "asyncio_mode", "asyncio_default_fixture_loop_scope", "timeout"):
        lines.append(f"{key} = {str(opts[key]).lower()}")
    path.write_text("\n".join(lines) + "\n")


# Modules a wheel ships that are not imported in its own venv: the PyTriton app
# runs inside the PyTriton venv (numpy, pytriton).
NOT_IMPORTED = ("_pytriton_app",)

_IMPORT_ALL = """
import importlib, importlib.metadata as md, sys
dist, skip = sys.argv[1], set(sys.argv[2:])
names = []
for f in md.files(dist) or ():
    parts = f.parts
    if f.suffix != ".py" or parts[0] != "llama_orch" or f.stem in skip:
        continue
    mod = ".".join(parts[:-1] + (() if f.stem == "__init__" else (f.stem,)))
    importlib.import_module(mod)
    names.append(mod)
print(len(names))
"""


def import_all(python: Path, pkg: Package, cwd: Path) -> int:
    """Import every module of ``pkg`` in ``python``'s venv; the number imported."""
    cmd = [str(python), "-c", _IMPORT_ALL, pkg.name, *NOT_IMPORTED]
    return int(_run(cmd, cwd, f"import every module of {pkg.name} alone").stdout.split()[-1])


def run_package_tests(
    pkg: Package,
    scratch: Path,
    *,
    plugins: tuple[str, ...] = (),
    markexpr: str = "",
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Steps 1-3 of the module docstring; returns pytest's result and the venv's dists."""
    members = workspace_members()
    python = make_venv(scratch / "venv")
    own = wheels_for([pkg.name], {**members, pkg.name: pkg})
    install(python, [pkg.name], own)
    import_all(python, pkg, scratch)
    for ep in pkg.entry_points:  # the package alone imports and registers itself
        code = (
            "from llama_orch.core.adapter_api import load_adapter_class as l; "
            f"print(l({ep!r}).__module__)"
        )
        _run([str(python), "-c", code], scratch, f"load adapter {ep!r} alone")
    alone = installed(python)
    install(python, list(pkg.test_group), own + wheels_for(list(pkg.test_group), members))
    run = scratch / "run"
    tests = run / "packages" / pkg.path.name / "tests"
    shutil.copytree(pkg.path / "tests", tests, ignore=shutil.ignore_patterns("__pycache__"))
    if (ROOT / "contracts").is_dir():  # data some tests check against (OpenAPI, pacts)
        shutil.copytree(ROOT / "contracts", run / "contracts")
    # repository data and helper scripts some tests load by path, as with contracts:
    # tools/*.py (nginx provisioning, the metrics lint), examples/ (policy sources)
    (run / "tools").mkdir()
    for helper in ROOT.glob("tools/*.py"):
        shutil.copy2(helper, run / "tools" / helper.name)
    if (ROOT / "ci" / "metrics.lint.json").is_file():  # the metrics contract
        (run / "ci").mkdir()
        shutil.copy2(ROOT / "ci" / "metrics.lint.json", run / "ci" / "metrics.lint.json")
    if (ROOT / "examples").is_dir():
        shutil.copytree(
            ROOT / "examples", run / "examples", ignore=shutil.ignore_patterns("__pycache__")
        )
    pytest_ini(run / "pytest.ini")
    cmd = [
        str(python),
        "-m",
        "pytest",
        "-c",
        str(run / "pytest.ini"),
        "--rootdir",
        str(run),
        "-q",
        "-p",
        "no:cacheprovider",
        # its own temp root: the shared pytest-of-<user> one races other runs' clean-up (ORCH-6257)
        "--basetemp",
        str(scratch / "pytest-tmp"),
    ]
    for p in plugins:
        cmd += ["-p", p]
    if markexpr:
        cmd += ["-m", markexpr]
    cmd.append(str(tests))
    proc = subprocess.run(
        cmd, cwd=run, env=clean_env(), capture_output=True, text=True, timeout=600
    )
    return proc, alone


if __name__ == "__main__":
    target = read_package(Path(sys.argv[1]).resolve())
    with tempfile.TemporaryDirectory() as d:
        result, dists = run_package_tests(target, Path(d), markexpr=STANDALONE_MARKEXPR)
        print(result.stdout[-3000:], result.stderr[-3000:])
        sys.exit(result.returncode)
