#!/usr/bin/env python3
"""Provision ``nginx`` from Debian's ``nginx`` package, for the proxy test (ORCH-1964).

Unpacked into the user cache by ``debian_tools.py`` (no system install). The
binary needs only libraries every Debian base system has (libc, libcrypt,
libpcre2, libssl, zlib); the test runs it with ``-p`` and a config of its own
(no ``/etc``, no root).

    tools/nginx_tools.py     # prints the binary's path, provisioning if needed
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debian_tools import CACHE, ProvisionError, provision_deb

__all__ = ["Nginx", "ProvisionError", "provision"]


@dataclass(frozen=True)
class Nginx:
    version: str
    nginx: Path


def provision(cache: Path = CACHE) -> Nginx:
    version, (nginx,) = provision_deb("nginx", ("usr/sbin/nginx",), cache)
    return Nginx(version, nginx)


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
