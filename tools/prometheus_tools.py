#!/usr/bin/env python3
"""Provision ``prometheus`` and ``promtool`` from Debian's ``prometheus`` package (ORCH-7020).

Unpacked into the user cache by ``debian_tools.py`` (no system install). The
binaries are statically linked Go programs (they need only libc), so no other
package is unpacked.

    tools/prometheus_tools.py     # prints the two paths, provisioning if needed
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debian_tools import CACHE, ProvisionError, provision_deb

__all__ = ["PrometheusTools", "ProvisionError", "provision"]


@dataclass(frozen=True)
class PrometheusTools:
    version: str
    prometheus: Path
    promtool: Path


def provision(cache: Path = CACHE) -> PrometheusTools:
    version, (prom, tool) = provision_deb(
        "prometheus", ("usr/bin/prometheus", "usr/bin/promtool"), cache
    )
    return PrometheusTools(version, prom, tool)


def main() -> int:
    try:
        tools = provision()
    except ProvisionError as exc:
        print(f"prometheus-tools: {exc}", file=sys.stderr)
        return 1
    print(f"prometheus {tools.version}\n{tools.prometheus}\n{tools.promtool}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
