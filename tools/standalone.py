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

import contextlib
import contextvars
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_orch.testing_engines import share

__all__ = [
    "ROOT",
    "Batch",
    "Package",
    "Runs",
    "Stopped",
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


class Stopped(RuntimeError):
    """The runs were stopped before this step began."""


_TAG = "LLAMA_ORCH_STANDALONE_RUNS"


class Runs:
    """The processes of one batch of runs (ORCH-6265). Each starts in a process group of its
    own (a terminal's Ctrl-C reaches the outer run only) with this batch's tag in its
    environment, inherited by all it starts; ``stop`` ends the groups and then every process
    still carrying the tag, by PID, never by name, and refuses any later step. In the batch's
    own process (``BatchProcess``) the tag is the one it was started with."""

    def __init__(self) -> None:
        self.tag = os.environ.get(_TAG) or f"{os.getpid()}-{time.time_ns()}"
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[str]] = set()
        self.stopped = False

    def start(
        self,
        cmd: list[str],
        cwd: Path,
        out: Any = subprocess.PIPE,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """Starts one process of the runs; without pipes when ``out`` is a file."""
        env = dict(clean_env() if env is None else env)
        env[_TAG] = self.tag
        err = subprocess.PIPE if out == subprocess.PIPE else subprocess.STDOUT
        with self._lock:
            if self.stopped:
                raise Stopped(f"not started, the runs were stopped: {' '.join(cmd)}")
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True
            )
            self._procs.add(proc)
        return proc

    def run(self, cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
        proc = self.start(cmd, cwd)
        try:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._end(proc)
                out, err = proc.communicate()
                raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
        finally:
            with self._lock:
                self._procs.discard(proc)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            procs = list(self._procs)
        for proc in procs:
            self._end(proc)
        self._sweep()

    def _end(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is not None:  # ended and reaped: its group id may be another's now
            return self._sweep()
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)  # its group: the pid is the group's id (new session)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
                break
        self._sweep()  # what it started in sessions of their own

    def _sweep(self) -> None:
        needle = f"{_TAG}={self.tag}".encode()
        for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)


# the runs of the current thread's batch; outside a batch each step is a run of its own
_RUNS: contextvars.ContextVar[Runs | None] = contextvars.ContextVar("standalone_runs", default=None)


def _spawn(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    runs = _RUNS.get()
    if runs is not None:
        return runs.run(cmd, cwd, timeout)
    return subprocess.run(
        cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess[str]:
    # each step's hang guard (the standalone test's own timeout covers a queue of runs)
    proc = _spawn(cmd, cwd, 600)
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
# A batch's runs leave out the timing-bound gates (ORCH-6258): they run in the background
# beside other tests (ORCH-6264); each package's gates run afterwards in its venv, alone.
BATCH_MARKEXPR = f"{STANDALONE_MARKEXPR} and not alone"
GATES_MARKEXPR = f"({STANDALONE_MARKEXPR}) and alone"


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
    return run_tests(pkg, scratch, plugins=plugins, markexpr=markexpr), alone


def run_tests(
    pkg: Package, scratch: Path, *, plugins: tuple[str, ...] = (), markexpr: str = ""
) -> subprocess.CompletedProcess[str]:
    """pytest on the package's tests in the venv ``run_package_tests`` made in ``scratch``."""
    run = scratch / "run"
    python = scratch / "venv" / "bin" / "python"
    tests = run / "packages" / pkg.path.name / "tests"
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
    return _spawn(cmd, run, 600)


Result = tuple[subprocess.CompletedProcess[str], dict[str, str], Path]


class Batch:
    """The standalone runs of the named packages (ORCH-4016), two at a time (one per core: each
    is a venv and a pytest process this process only waits on), the longest first, all their
    processes in one ``Runs``. Each run leaves out the package's ``alone`` gates (ORCH-6264)
    and writes its record, ``result.json``, in its scratch directory. Run by ``BatchProcess``."""

    def __init__(self, names: list[str], scratch: Path) -> None:
        self.runs = Runs()
        self._t0 = time.monotonic()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="standalone")
        self._runs: dict[str, Future[Result]] = {}
        # the longest runs first (by the size of their tests), so none is left alone at the end
        size = {n: sum(1 for _ in (ROOT / "packages" / n / "tests").rglob("*.py")) for n in names}
        for name in sorted(names, key=lambda n: -size[n]):
            pkg = read_package(ROOT / "packages" / name)
            d = scratch / f"alone-{name}"
            d.mkdir(parents=True)
            self._runs[name] = self._pool.submit(self._first, pkg, d)

    def _first(self, pkg: Package, d: Path) -> Result:
        _RUNS.set(self.runs)  # this thread's context: the pool's threads run one run at a time
        start = time.monotonic()
        record: dict[str, Any] = {"start": start - self._t0}
        try:
            proc, dists = run_package_tests(pkg, d, markexpr=BATCH_MARKEXPR)
            record.update(returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
            record.update(dists=dists)
            return proc, dists, d
        except BaseException:
            record["error"] = traceback.format_exc()
            raise
        finally:
            record["end"] = time.monotonic() - self._t0
            (d / "result.json").write_text(json.dumps(record))

    def wait(self) -> None:
        wait_all(self._runs.values())


class BatchProcess:
    """A ``Batch`` in a process of its own (``tools/standalone.py --batch``), so that while it
    runs beside the tests (ORCH-6264) the pytest process holds none of its threads, pipes or
    output: in-process tests count their file descriptors and memory. Its processes are one
    ``Runs`` (ORCH-6265); ``result`` reads a package's record, ``gates`` runs its ``alone``
    tests here, in the venv the batch made."""

    def __init__(self, names: list[str], scratch: Path, *, remove: bool = False) -> None:
        self.runs = Runs()
        self._scratch, self._remove = scratch, remove
        self._pkgs = {n: read_package(ROOT / "packages" / n) for n in names}
        self._log = scratch / "batch.log"
        self._share: tuple[int | None, str] | None = None  # the share's run (ORCH-6270)
        with self._log.open("w") as log:  # the child's: this process keeps no descriptor
            cmd = [sys.executable, str(Path(__file__).resolve()), "--batch", str(scratch), *names]
            self._proc = self.runs.start(cmd, ROOT, log)

    def __str__(self) -> str:
        lines = self._log.read_text().splitlines() if self._log.is_file() else []
        return f"the standalone batch ({lines[-1] if lines else 'no output'})"

    def wait(self) -> None:
        self._proc.wait()
        if self._share is None:  # kept: ``stop`` removes the scratch directory
            self._share = share.read_result(self._scratch)

    def ended(self) -> bool:
        return self._proc.poll() is not None

    def share_result(self) -> tuple[int | None, str]:
        """The exit of the share it ran after the batch (ORCH-6270) and its output's end."""
        return self._share or share.read_result(self._scratch)

    def result(self, name: str) -> Result:
        self.wait()
        d = self._scratch / f"alone-{name}"
        path = d / "result.json"
        if not path.is_file():
            raise RuntimeError(f"no result for {name}; the batch's output:\n{self._tail()}")
        record = json.loads(path.read_text())
        if "error" in record:
            raise RuntimeError(f"{name}'s standalone run failed:\n{record['error']}")
        proc = subprocess.CompletedProcess[str](
            [], record["returncode"], record["stdout"], record["stderr"]
        )
        return proc, record["dists"], d

    def _tail(self) -> str:
        return self._log.read_text()[-6000:] if self._log.is_file() else "(none)"

    def gates(self, name: str) -> subprocess.CompletedProcess[str] | None:
        """The package's non-real ``alone`` tests in its venv (pytest's 5, none selected,
        when all its gates are real-engine ones); None when its tests name no such mark."""
        pkg = self._pkgs[name]
        if not any("mark.alone" in f.read_text() for f in (pkg.path / "tests").rglob("*.py")):
            return None
        d = self.result(name)[2]
        token = _RUNS.set(self.runs)
        try:
            return run_tests(pkg, d, markexpr=GATES_MARKEXPR)
        finally:
            _RUNS.reset(token)

    def stop(self) -> None:
        self.runs.stop()
        if self._remove:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _batch_main(scratch: Path, names: list[str]) -> int:
    start = time.monotonic()
    batch = Batch(names, scratch)
    batch.wait()
    records = [json.loads((scratch / f"alone-{n}" / "result.json").read_text()) for n in names]
    for name, r in sorted(zip(names, records, strict=True), key=lambda x: x[1]["start"]):
        rc = r.get("returncode", "error")
        print(f"{name}: {r['start']:.1f}-{r['end']:.1f} s, exit {rc}", flush=True)
    print(f"{len(names)} runs, {time.monotonic() - start:.1f} s", flush=True)
    if (scratch / share.ARGS).is_file():  # then a share of the first part's tests (ORCH-6270)
        begin = time.monotonic()
        code = share.run(batch.runs.start, ROOT, scratch, clean_env())
        print(f"the share: exit {code}, {time.monotonic() - begin:.1f} s", flush=True)
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--batch"]:
    sys.exit(_batch_main(Path(sys.argv[2]), sys.argv[3:]))
elif __name__ == "__main__":
    target = read_package(Path(sys.argv[1]).resolve())
    with tempfile.TemporaryDirectory() as d:
        result, dists = run_package_tests(target, Path(d), markexpr=STANDALONE_MARKEXPR)
        print(result.stdout[-3000:], result.stderr[-3000:])
        sys.exit(result.returncode)
