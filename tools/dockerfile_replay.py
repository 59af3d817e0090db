#!/usr/bin/env python3
"""Replay the Dockerfile's build steps without docker (ORCH-6237).

No docker daemon runs on the project's machines and the base images' registry
is unreachable, so the image has never been built here. This tool does the
next best thing: it reads the ``Dockerfile``, maps the image's paths
(``/src``, ``/build``, ``/opt/llama-orch``, ...) into a temporary directory,
copies the build context there (git's file list minus ``.dockerignore``),
creates a clean venv standing for the base image's ``python3``, and runs every
``RUN`` step that builds or installs llama-orch exactly as written (build
arguments and ``ENV`` expanded, the build stage's ``ENV`` set). System steps
(``apt-get``, ``useradd``) are not replayed, they would change this machine;
the commands and libraries their packages provide are checked on the host
instead. Finally the runtime stage's ``COPY`` steps are applied and the
image's commands run from the result (``orchestratord --help``,
``pool-managerd --help``, ``llorch --help``, ``llama-server --version``,
``llama-orch-probe --help``).

    python3 tools/dockerfile_replay.py                # faithful: the image's empty caches
    python3 tools/dockerfile_replay.py --host-cache   # reuse this user's uv and engine caches
    python3 tools/dockerfile_replay.py --plan         # print the steps, run nothing

``--host-cache`` keeps ``XDG_CACHE_HOME`` of the host, so the wheels and the
``llama-server`` build cached by earlier runs are reused (the build stage's
``XDG_CACHE_HOME=/build/cache`` otherwise starts empty: a full llama-server
build). Exit status 0 when every replayed step and every check passed.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
# RUN steps that only the image may do (system packages, users): checked, not run
SYSTEM_COMMANDS = ("apt-get", "useradd")
# Top-level directories of the host that are never mapped into the replay's root
# Directories every Debian/Ubuntu base image has (FHS)
BASE_IMAGE_DIRS = ("opt", "usr/local/bin", "var/lib", "tmp")
HOST_DIRS = {"usr", "var", "etc", "tmp", "bin", "lib", "lib64", "sbin", "proc", "dev", "root"}

__all__ = ["Stage", "Step", "parse", "plan", "replay"]


@dataclass
class Step:
    stage: str
    instruction: str  # RUN, COPY, ENV, WORKDIR
    text: str  # as written, continuation lines joined
    expanded: str = ""
    system: bool = False  # a RUN step that is checked, not replayed


@dataclass
class Stage:
    name: str
    base: str
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append((buf + stripped).strip())
        buf = ""
    if buf:
        lines.append(buf.strip())
    return lines


_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand(text: str, values: dict[str, str]) -> str:
    """``${X}`` and ``$X`` from ``values``; unknown names stay as written (shell's)."""
    return _VAR.sub(lambda m: values.get(m[1] or m[2], m[0]), text)


def _assignments(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for token in shlex.split(text):
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


def parse(path: Path = DOCKERFILE, build_args: dict[str, str] | None = None) -> list[Stage]:
    """The stages, with ARG defaults (or ``build_args``) and ENV expanded in order."""
    overrides = build_args or {}
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        word, _, rest = line.partition(" ")
        word = word.upper()
        scope = stages[-1] if stages else None
        values = {**global_args, **(scope.args if scope else {}), **(scope.env if scope else {})}
        if word == "ARG":
            name, sep, default = rest.partition("=")
            value = overrides.get(name, expand(default.strip('"'), values) if sep else "")
            if scope is None:
                global_args[name] = value
            else:
                scope.args[name] = overrides.get(
                    name, global_args.get(name, value) if not sep else value
                )
        elif word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, expand(parts[0], global_args)))
        elif scope is None:
            raise ValueError(f"{word} before FROM: {line}")
        else:
            step = Step(scope.name, word, rest, expand(rest, values))
            if word == "ENV":
                scope.env.update({k: expand(v, values) for k, v in _assignments(rest).items()})
            elif word == "RUN":
                step.system = step.expanded.split()[0] in SYSTEM_COMMANDS
            scope.steps.append(step)
    return stages


def plan(path: Path = DOCKERFILE) -> list[Step]:
    """Every RUN step in order, each marked replayed or system (``--plan``)."""
    return [s for stage in parse(path) for s in stage.steps if s.instruction == "RUN"]


class _Mapper:
    """Image paths under the replay's root: ``/opt/x`` → ``<root>/opt/x``."""

    def __init__(self, root: Path, stages: list[Stage]) -> None:
        self.root = root
        tops: set[str] = set()
        for stage in stages:
            for step in stage.steps:
                if step.instruction in ("WORKDIR", "COPY"):
                    tops.add(step.expanded.split()[-1].strip("/").split("/")[0])
            for value in stage.env.values():
                tops.update(m[1] for m in re.finditer(r"(?:^|[\s:=])/([\w.-]+)", value))
        self.tops = sorted(tops - HOST_DIRS - {""})
        alt = "|".join(map(re.escape, self.tops)) or "(?!)"
        self._re = re.compile(rf"(?<![\w.~-])/({alt})(?=/|\s|:|$|\")")

    def __call__(self, text: str) -> str:
        return self._re.sub(lambda m: f"{self.root}/{m[1]}", text)

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")


def _context_files(src: Path) -> list[str]:
    """The build context: git's tracked and untracked files minus .dockerignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=src,
        capture_output=True,
        check=True,
    ).stdout.decode()
    ignore_file = src / ".dockerignore"
    patterns = [
        p.strip()
        for p in (ignore_file.read_text().splitlines() if ignore_file.is_file() else [])
        if p.strip() and not p.startswith("#")
    ]

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(p, pat)
            or fnmatch.fnmatch(p, pat.removeprefix("**/"))
            or fnmatch.fnmatch(parts[i], pat.removeprefix("**/"))
            for pat in patterns
            for i, p in enumerate(prefixes)
        )

    return [f for f in out.split("\0") if f and (src / f).is_file() and not ignored(f)]


def _provides(package: str) -> tuple[str, bool]:
    """What an apt package gives the image, and whether this host has it."""
    lib = re.fullmatch(r"(lib[\w+.-]*?)(\d+)", package)
    if lib:
        soname = f"{lib[1]}.so.{lib[2]}"
        listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
        return soname, soname in listed
    command = {"python3-pip": "pip3", "python3-venv": "python3"}.get(package, package)
    return command, shutil.which(command) is not None


def _say(msg: str) -> None:
    print(f"[replay] {msg}", flush=True)


def replay(workdir: Path, *, host_cache: bool, src: Path = ROOT) -> int:
    stages = parse(src / "Dockerfile")
    root = workdir / "root"
    for base_dir in BASE_IMAGE_DIRS:  # the base image has them; the replay's root not
        (root / base_dir).mkdir(parents=True)
    mapper = _Mapper(root, stages)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    venv = workdir / "base-python"
    _say(f"image paths {', '.join('/' + t for t in mapper.tops)} -> {root}")
    _say(f"clean venv for the base image's python3: {venv} (from {base})")
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    failures = 0
    timings: list[tuple[str, float]] = []
    for stage in stages:
        env = {
            k: v
            for k, v in os.environ.items()
            # nothing of the caller's tools: uv (``$UV``), venv, engine
            if not k.startswith(("UV", "VIRTUAL_ENV", "PYTHONPATH", "LLAMA_SERVER_BIN"))
        }
        env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
        cwd = root
        for step in stage.steps:
            if step.instruction == "ENV":
                for key, value in _assignments(step.expanded).items():
                    value = expand(value, {"PATH": env["PATH"]})
                    if key == "XDG_CACHE_HOME" and host_cache:
                        _say(f"ENV {key}={value}: kept the host's (--host-cache)")
                        continue
                    env[key] = mapper(value)
            elif step.instruction == "WORKDIR":
                cwd = mapper.path(step.expanded)
                cwd.mkdir(parents=True, exist_ok=True)
            elif step.instruction == "COPY":
                words = step.expanded.split()
                if words[0].startswith("--from="):
                    _say(f"COPY {step.expanded}: same paths in one root, nothing to copy")
                    continue
                srcs, dest = words[:-1], mapper.path(words[-1])
                if srcs == ["."]:
                    files = _context_files(src)
                    for rel in files:
                        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(src / rel, dest / rel)
                    _say(f"COPY . {words[-1]}: {len(files)} files of the build context")
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    for s in srcs:
                        shutil.copy2(src / s, dest)
                    _say(f"COPY {step.expanded}")
            elif step.instruction == "RUN" and step.system:
                if step.expanded.startswith("apt-get"):
                    pkgs = step.expanded.split("--no-install-recommends", 1)[1].split("&&")[0]
                    for pkg in pkgs.split():
                        what, ok = _provides(pkg)
                        failures += not ok
                        found = "ok" if ok else "MISSING"
                        _say(f"system step, not replayed: {pkg} -> {what} {found}")
                else:
                    _say(f"system step, not replayed: {step.expanded}")
            elif step.instruction == "RUN":
                command = mapper(step.expanded)
                _say(f"RUN ({stage.name}) {command}")
                t0 = time.monotonic()
                proc = subprocess.run(["/bin/sh", "-c", command], cwd=cwd, env=env)
                took = time.monotonic() - t0
                timings.append((step.expanded, took))
                _say(f"  exit {proc.returncode} after {took:.1f} s")
                if proc.returncode != 0:
                    return 1
        if stage is stages[-1]:
            failures += _smoke(stage, env, mapper)
    for text, took in timings:
        _say(f"{took:8.1f} s  {text}")
    return 1 if failures else 0


def _smoke(stage: Stage, env: dict[str, str], mapper: _Mapper) -> int:
    """The runtime stage's commands, from the replayed image paths."""
    failures = 0
    server = env.get("LLAMA_SERVER_BIN", "")
    probe = [
        s.expanded.split()[-1]
        for s in stage.steps
        if s.instruction == "COPY" and "probe" in s.expanded
    ]
    checks = [["orchestratord", "--help"], ["pool-managerd", "--help"], ["llorch", "--help"]]
    checks += [[server, "--version"]] if server else []
    checks += [[str(mapper.path(p)), "--help"] for p in probe]
    for argv in checks:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        ok = proc.returncode == 0
        failures += not ok
        first = (proc.stdout or proc.stderr).strip().splitlines()[:1]
        _say(f"runtime: {' '.join(argv)} -> exit {proc.returncode} {first}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="store_true", help="print the steps, run nothing")
    parser.add_argument("--host-cache", action="store_true", help="reuse this user's caches")
    parser.add_argument("--keep", type=Path, help="replay in this new directory and keep it")
    args = parser.parse_args(argv)
    if args.plan:
        for step in plan():
            print(f"{'system' if step.system else 'replay'}\t{step.stage}\t{step.expanded}")
        return 0
    t0 = time.monotonic()
    if args.keep:
        args.keep.mkdir(parents=True)
        rc = replay(args.keep.resolve(), host_cache=args.host_cache)
    else:
        with tempfile.TemporaryDirectory(prefix="llorch-replay-") as tmp:
            rc = replay(Path(tmp), host_cache=args.host_cache)
    _say(f"{'ok' if rc == 0 else 'FAILED'} after {time.monotonic() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
