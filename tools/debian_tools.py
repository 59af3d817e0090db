#!/usr/bin/env python3
"""Unpack a Debian package's binaries into the user cache, without installing it.

``apt-get download PACKAGE`` fetches the .deb into a temporary directory and
``dpkg-deb -x`` unpacks it under ``~/.cache/llama-orch/tools/<package>/<deb
version>/``; a ``.complete`` marker is written last, so a half-unpacked tree is
never used. A file lock serialises parallel test sessions: the first one
provisions, the others reuse the cache. When ``apt-get download`` fails because
the package lists are empty (a fresh machine), ``apt-get update`` runs once and
the download is retried. Used by ``nginx_tools.py`` and ``prometheus_tools.py``.

    tools/debian_tools.py PACKAGE usr/bin/NAME...   # prints the paths
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llama-orch" / "tools"


class ProvisionError(Exception):
    """apt or dpkg is missing, or the package could not be fetched or unpacked."""


def _cached(root: Path, binaries: tuple[str, ...]) -> tuple[str, list[Path]] | None:
    if not root.is_dir():
        return None
    for vdir in sorted(root.iterdir(), reverse=True):
        paths = [vdir / b for b in binaries]
        if all(p.is_file() for p in paths) and (vdir / ".complete").is_file():
            return vdir.name, paths
    return None


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def provision_deb(
    package: str, binaries: tuple[str, ...], cache: Path = CACHE
) -> tuple[str, list[Path]]:
    """(Debian version, paths of ``binaries``: paths inside the package such as
    ``usr/sbin/nginx``), unpacking the package first if no complete copy is cached."""
    root = cache / package
    found = _cached(root, binaries)
    if found is not None:
        return found
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ProvisionError(f"{tool} not found: cannot provision Debian's {package} package")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _cached(root, binaries)  # another session may have finished meanwhile
        if found is not None:
            return found
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            work = Path(tmp)
            got = _run(["apt-get", "download", package], work)
            if got.returncode != 0:
                _run(["apt-get", "update"], work)
                got = _run(["apt-get", "download", package], work)
            debs = sorted(work.glob(f"{package}_*.deb"))
            if got.returncode != 0 or not debs:
                raise ProvisionError(f"apt-get download {package} failed: {got.stderr.strip()}")
            version = debs[0].name.split("_")[1]
            unpack = work / "x"
            got = _run(["dpkg-deb", "-x", str(debs[0]), str(unpack)], work)
            if got.returncode != 0:
                raise ProvisionError(f"dpkg-deb -x failed: {got.stderr.strip()}")
            (unpack / ".complete").write_text(debs[0].name + "\n")
            dest = root / version
            if dest.exists():
                shutil.rmtree(dest)
            unpack.rename(dest)
    found = _cached(root, binaries)
    if found is None:
        raise ProvisionError(f"{package} unpacked but {', '.join(binaries)} missing under {root}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        version, paths = provision_deb(argv[0], tuple(argv[1:]))
    except ProvisionError as exc:
        print(f"debian-tools: {exc}", file=sys.stderr)
        return 1
    print(f"{argv[0]} {version}")
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
