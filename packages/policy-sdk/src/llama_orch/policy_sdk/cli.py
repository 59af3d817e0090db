"""``llorch-policy``: build, run and test policies (ORCH-8530..8532).

::

    llorch-policy build policy.c -o policy.wasm      # C or Zig -> wasm32 (ziglang)
    llorch-policy run policy.wasm snapshot.json      # print the decision
    llorch-policy test policy.wasm vectors/          # conformance vectors
    llorch-policy schemas DIR                        # write the JSON Schemas

``run`` and ``test`` use ``llama-orch-policy-host``, the code orchestratord
runs policies with, under the same limits (``--fuel``, ``--memory-mib``,
``--budget-ms``). A policy is a ``.wasm``/``.wat`` path or ``native:NAME``
(an entry point in ``llama_orch.policies``).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

import msgspec

from .abi import DECISION_TYPES, SNAPSHOT_TYPES, decode_snapshot, encode
from .build import BuildError, build

__all__ = ["main", "write_schemas"]


def write_schemas(directory: Path) -> list[Path]:
    """One JSON Schema per hook for the snapshot and the decision (ORCH-8503)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for hook in SNAPSHOT_TYPES:
        for what, types in (("snapshot", SNAPSHOT_TYPES), ("decision", DECISION_TYPES)):
            path = directory / f"{hook}.{what}.schema.json"
            schema = _clean(msgspec.json.schema(types[hook]))
            path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
            out.append(path)
    return out


def _clean(node: Any) -> Any:
    """Docstring descriptions dedented (msgspec versions differ in this)."""
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _clean(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _load(policy: str, args: argparse.Namespace) -> Any:
    try:
        from llama_orch.core.policy_config import PolicyModule
        from llama_orch.policy_host import load_policy
    except ImportError:
        sys.exit("llorch-policy run/test need llama-orch-policy-host: pip install it")
    kw: dict[str, Any] = dict(
        fuel=args.fuel, memory_mib=args.memory_mib, wasi=args.wasi, log=args.log
    )
    if policy.startswith("native:"):
        spec = PolicyModule(name="cli", entry_point=policy.removeprefix("native:"), **kw)
    else:
        path = Path(policy).resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        name = re.sub(r"[^a-z0-9_.-]", "-", path.stem.lower())[:60] or "cli"
        spec = PolicyModule(name=name, path=str(path), sha256=digest, **kw)
    return load_policy(spec, cache_dir=None)


def _run(args: argparse.Namespace) -> int:
    from llama_orch.policy_host import PolicyError

    raw = Path(args.snapshot).read_bytes()
    doc = msgspec.json.decode(raw, type=dict[str, Any])
    hook = doc.get("hook", "admission")
    if "snapshot" in doc:  # a vector file: run its snapshot
        raw = msgspec.json.encode(doc["snapshot"])
    try:
        snapshot = decode_snapshot(hook, raw)
    except (msgspec.ValidationError, KeyError) as exc:
        print(f"invalid {hook} snapshot: {exc}", file=sys.stderr)
        return 2
    try:
        runner = _load(args.policy, args)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        decision = runner.decide(hook, snapshot, args.budget_ms)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        runner.close()
    print(encode(decision).decode())
    return 0


def _test(args: argparse.Namespace) -> int:
    from llama_orch.policy_host import PolicyError, run_vectors

    try:
        runner = _load(args.policy, args)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        report = run_vectors(runner, Path(args.vectors))
    finally:
        runner.close()
    for name in report.passed:
        print(f"PASS {name}")
    for name, why in report.failures:
        print(f"FAIL {name}: {why}")
    print(f"{len(report.passed)} passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


def _build(args: argparse.Namespace) -> int:
    src = Path(args.source)
    out = Path(args.output) if args.output else src.with_suffix(".wasm")
    try:
        build(src, out, libc=args.libc)
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out} ({out.stat().st_size} bytes, sha256 {digest})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llorch-policy", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile C or Zig to a wasm32 policy")
    b.add_argument("source")
    b.add_argument("-o", "--output")
    b.add_argument("--libc", action="store_true", help="link wasi-libc (needs `wasi: true`)")
    for name, helptext in (("run", "print a policy's decision"), ("test", "run vectors")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("policy")
        p.add_argument("snapshot" if name == "run" else "vectors")
        p.add_argument("--fuel", type=int, default=1_000_000)
        p.add_argument("--memory-mib", type=int, default=16)
        p.add_argument("--budget-ms", type=float, default=50.0)
        p.add_argument("--wasi", action="store_true")
        p.add_argument("--log", action="store_true")
    s = sub.add_parser("schemas", help="write the JSON Schemas of ABI v1")
    s.add_argument("directory")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        return _build(args)
    if args.cmd == "run":
        return _run(args)
    if args.cmd == "test":
        return _test(args)
    for path in write_schemas(Path(args.directory)):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
