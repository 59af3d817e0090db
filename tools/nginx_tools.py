#!/usr/bin/env python3
"""Provision ``nginx`` from Debian's ``nginx`` package, for the proxy test (ORCH-1964).

Nothing is installed system-wide, exactly as ``prometheus_tools.py`` does:
``apt-get download nginx`` fetches the .deb into a temporary directory and
``dpkg-deb -x`` unpacks it under ``~/.cache/llama-orch/tools/nginx/<deb
version>/``. The binary needs only libraries every Debian base system has
(libc, libcrypt, libpcre2, libssl, zlib); the test runs it with ``-p`` and a
config of its own (no ``/etc``, no root). A file lock serialises parallel
test sessions. When ``apt-get download`` fails because the package lists are
empty (a fresh machine), ``apt-get update`` runs once and the download is
retried.

    tools/nginx_tools.py     # prints the binary's path, provisioning if needed
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llama-orch" / "tools"
PACKAGE = "nginx"


class ProvisionError(Exception):
    """apt or dpkg is missing, or the package could not be fetched or unpacked."""


@dataclass(frozen=True)
class Nginx:
    version: str
    nginx: Path


def _cached(root: Path) -> Nginx | None:
    if not root.is_dir():
        return None
    for vdir in sorted(root.iterdir(), reverse=True):
        binary = vdir / "usr" / "sbin" / "nginx"
        if binary.is_file() and (vdir / ".complete").is_file():
            return Nginx(vdir.name, binary)
    return None


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def provision(cache: Path = CACHE) -> Nginx:
    root = cache / PACKAGE
    found = _cached(root)
    if found is not None:
        return found
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise ProvisionError(f"{tool} not found: cannot provision Debian's {PACKAGE} package")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _cached(root)  # another session may have finished meanwhile
        if found is not None:
            return found
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            work = Path(tmp)
            got = _run(["apt-get", "download", PACKAGE], work)
            if got.returncode != 0:
                _run(["apt-get", "update"], work)
                got = _run(["apt-get", "download", PACKAGE], work)
            debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
            if got.returncode != 0 or not debs:
                raise ProvisionError(f"apt-get download {PACKAGE} failed: {got.stderr.strip()}")
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
    found = _cached(root)
    if found is None:
        raise ProvisionError(f"{PACKAGE} unpacked but its binary is missing under {root}")
    return found


def main() -> int:
    try:
        tools = provision()
    except ProvisionError as exc:
        print(f"nginx-tools: {exc}", file=sys.stderr)
        return 1
    print(f"nginx {tools.version}\n{tools.nginx}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
