#!/usr/bin/env python3
"""What the shared catalog costs on the admission path (issue #18, ORCH-3383).

``Catalog.choose`` is what admission calls for a task naming a model by name
(``pools_for``). Without a canary it reads memory only, whatever the backend;
with a canary it takes the canary credit, which on the shared Valkey store is
one script call (a network round trip on the event loop) instead of a float
in this process. This measures ``choose`` per call for a name with a canary,
SQLite (local credit) and Valkey (embedded server on loopback) side by side,
in alternating rounds so both see the same machine load, and a name without a
canary on Valkey as the floor.

    uv run python bench/catalog_credit.py [--calls 5000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from llama_orch.orchestratord.catalog import Catalog, Entry, Provenance
from llama_orch.state_valkey import EmbeddedServer
from llama_orch.state_valkey.catalog import ValkeyCatalog


def _entry(n: int, state: str) -> Entry:
    digest = hashlib.sha256(f"model-{n}".encode()).hexdigest()
    return Entry(
        id=digest[:16],
        name="tiny",
        tags=[f"v{n}"],
        digest=digest,
        size=1,
        format="gguf",
        ref=f"/m/{n}.gguf",
        provenance=Provenance("file", f"file:///m/{n}.gguf"),
        state=state,  # type: ignore[arg-type]
    )


def _fill(cat: Catalog, canary: bool) -> None:
    cat.add(_entry(1, "active"))
    if canary:
        cat.add(_entry(2, "draft"))
        cat.transition(_entry(2, "draft").id, "canary", weight=0.2)


def _per_call_us(cat: Catalog, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        cat.choose("tiny")
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp) / "valkey")
        url = server.start()
        try:
            local = Catalog(str(Path(tmp) / "local.sqlite3"))
            _fill(local, canary=True)
            shared = Catalog(str(Path(tmp) / "unused.sqlite3"))
            shared.use(ValkeyCatalog(url, "bench-a"))
            _fill(shared, canary=True)
            floor = Catalog(str(Path(tmp) / "unused2.sqlite3"))
            floor.use(ValkeyCatalog(url, "bench-b"))
            _fill(floor, canary=False)
            times: dict[str, list[float]] = {"sqlite": [], "valkey": [], "valkey-no-canary": []}
            for _ in range(args.rounds):
                times["sqlite"] += _per_call_us(local, args.calls)
                times["valkey"] += _per_call_us(shared, args.calls)
                times["valkey-no-canary"] += _per_call_us(floor, args.calls)
            for cat in (local, shared, floor):
                cat.backend.close()
        finally:
            server.stop()
    print(f"Catalog.choose per call, {args.rounds} rounds x {args.calls} calls (microseconds)")
    print(f"{'backend':<18} {'p50':>8} {'p99':>8}")
    p50 = {}
    for name, xs in times.items():
        xs.sort()
        p50[name] = statistics.median(xs)
        print(f"{name:<18} {p50[name]:8.1f} {xs[int(len(xs) * 0.99)]:8.1f}")
    print(f"valkey / sqlite p50 ratio (canary credit): {p50['valkey'] / p50['sqlite']:.0f}x")


if __name__ == "__main__":
    main()
