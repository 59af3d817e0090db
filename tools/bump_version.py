#!/usr/bin/env python3
"""Set the release version everywhere it is written (ORCH-6200, ORCH-6201).

One release train: the root ``pyproject.toml`` ``[project] version`` is the
release version; every ``packages/*/pyproject.toml``, the ``info.version`` of
every ``contracts/openapi/*.yaml`` (and the ``api_version`` constant of the
capabilities schema) and ``llama_orch.core.api.API_VERSION`` carry the same.
Which number to choose is the rule of ORCH-6201 (before 1.0.0: breaking →
minor, else patch); this tool only writes it, and ``--check`` lists the files
that disagree with the root.

    tools/bump_version.py 0.3.0     # write 0.3.0 everywhere
    tools/bump_version.py --check   # exit 1 when a file disagrees with the root
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEMVER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
API_PY = Path("packages/core/src/llama_orch/core/api.py")

# Patterns whose group 2 is the version; the first match in a file is the one.
_PYPROJECT = re.compile(r'(?m)^(version = ")([^"]+)(")$')
_OPENAPI_INFO = re.compile(r"(?m)^(  version: )(\S+)()$")
# the capabilities schema's `api_version: {const: X.Y.Z}`: the only semver-shaped const
_API_CONST = re.compile(r"(?m)^(\s+const: )([0-9]+\.[0-9]+\.[0-9]+)()$")
_API_PY = re.compile(r'(?m)^(API_VERSION = ")([^"]+)(")$')


def release_version(root: Path = ROOT) -> str:
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]


def _targets(root: Path) -> list[tuple[Path, re.Pattern[str], bool]]:
    """(file, pattern, required) for every place the version is written."""
    out: list[tuple[Path, re.Pattern[str], bool]] = [(root / "pyproject.toml", _PYPROJECT, True)]
    out += [(p, _PYPROJECT, True) for p in sorted(root.glob("packages/*/pyproject.toml"))]
    for doc in sorted(root.glob("contracts/openapi/*.yaml")):
        out.append((doc, _OPENAPI_INFO, True))
        out.append((doc, _API_CONST, False))
    out.append((root / API_PY, _API_PY, True))
    return out


def _first(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    # pyproject: the [project] table's version is the first `version = "..."` line
    return pattern.search(text)


def found_versions(root: Path = ROOT) -> dict[str, str]:
    """``{"path[:const]": version}`` for every place the version is written."""
    out: dict[str, str] = {}
    for path, pattern, required in _targets(root):
        text = path.read_text(encoding="utf-8")
        m = _first(pattern, text)
        if m is None:
            if required:
                out[path.relative_to(root).as_posix()] = "<missing>"
            continue
        key = path.relative_to(root).as_posix() + (":const" if pattern is _API_CONST else "")
        out[key] = m.group(2)
    return out


def mismatches(root: Path = ROOT) -> list[str]:
    want = release_version(root)
    return [f"{k}: {v} != {want}" for k, v in found_versions(root).items() if v != want]


def bump(version: str, root: Path = ROOT) -> list[Path]:
    if not SEMVER.match(version):
        raise ValueError(f"{version!r} is not MAJOR.MINOR.PATCH")
    changed: list[Path] = []
    for path, pattern, _required in _targets(root):
        text = path.read_text(encoding="utf-8")
        new = pattern.sub(lambda m: f"{m.group(1)}{version}{m.group(3)}", text, count=1)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", nargs="?", help="the new release version, MAJOR.MINOR.PATCH")
    parser.add_argument("--check", action="store_true", help="fail when a file disagrees")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    if args.check:
        bad = mismatches(args.root)
        for line in bad:
            print(f"bump_version: {line}", file=sys.stderr)
        return 1 if bad else 0
    if not args.version:
        parser.error("give a version or --check")
    for path in bump(args.version, args.root):
        print(f"wrote {path.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
