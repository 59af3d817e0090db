#!/usr/bin/env python3
"""Kubernetes readiness probe for orchestratord and pool-managerd (ORCH-6221).

Kubernetes judges an ``httpGet`` probe by the status code alone, and neither
daemon has an endpoint whose status says "ready": orchestratord's
``GET /v1/pools/{id}/health`` answers 200 with ``"ready": false`` while no
replica is Ready, and pool-managerd serves only token-protected routes. This
script reads the real answers instead and exits 0 only when the daemon can
serve work:

    llama-orch-probe orchestratord --url http://127.0.0.1:8080 --pool default
    llama-orch-probe pool-managerd --url http://127.0.0.1:8090

* orchestratord: 200 from the pool's health with ``ready: true`` (needs
  ``auth.public_health: true``, else ``$LLORCH_API_KEY``).
* pool-managerd: 200 from ``GET /v1/replicas`` with the bearer token from
  ``$LLAMA_ORCH_POOL_TOKEN`` and at least one replica with ``status: ready``.

Standard library only: it runs with the image's Python and nothing else.
Exit codes: 0 ready, 1 not ready (the reason on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


def _get(url: str, token: str | None, timeout: float) -> object:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def check(daemon: str, url: str, pool: str, timeout: float = 3.0) -> str | None:
    """None when ready, else why not."""
    base = url.rstrip("/")
    try:
        if daemon == "orchestratord":
            doc = _get(f"{base}/v1/pools/{pool}/health", os.environ.get("LLORCH_API_KEY"), timeout)
            if isinstance(doc, dict) and doc.get("ready") is True:
                return None
            last = doc.get("last_error") if isinstance(doc, dict) else None
            return f"pool {pool} has no Ready replica" + (f": {last}" if last else "")
        doc = _get(f"{base}/v1/replicas", os.environ.get("LLAMA_ORCH_POOL_TOKEN"), timeout)
        replicas = doc.get("replicas", []) if isinstance(doc, dict) else []
        if any(isinstance(r, dict) and r.get("status") == "ready" for r in replicas):
            return None
        return f"no Ready replica among {len(replicas)}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} from {exc.url}"
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llama-orch-probe", description=__doc__.split("\n")[0])
    parser.add_argument("daemon", choices=["orchestratord", "pool-managerd"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pool", default="default", help="orchestratord: the pool to check")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    why = check(args.daemon, args.url, args.pool, args.timeout)
    if why is not None:
        print(f"not ready: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
