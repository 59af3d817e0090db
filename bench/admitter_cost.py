#!/usr/bin/env python3
"""What recording the admitting instance costs the store on the request path
(ORCH-2603): ``llorch_submit_dispatch`` of the llorch library before the change
(``--before``: a checkout's ``llorch.lua``) against this tree's, on one embedded
valkey-server, loaded in turn (``FUNCTION LOAD REPLACE``) and measured alternately
``--rounds`` times with ``--calls`` calls each (every call admits and dispatches one
task on a fresh key prefix with free slots). Server time per call is Valkey's own
(``INFO commandstats``, ``cmdstat_fcall`` ``usec_per_call``).

    uv run python bench/admitter_cost.py --before /work/main [--calls 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import valkey.asyncio as valkey
from llama_orch.core.config import StateOptions
from llama_orch.core.state_store import (
    PoolPolicy,
    SlotView,
    StoreConfig,
    TaskSpec,
    load_state_store_class,
)
from llama_orch.state_valkey._store import LIBRARY
from llama_orch.testing_engines.valkey import valkey_server

LUA = "packages/state-valkey/src/llama_orch/state_valkey/llorch.lua"


async def _phase(url: str, raw: valkey.Valkey, library: str, tag: str, calls: int) -> float:
    opts = StateOptions(backend="valkey", url=url, key_prefix=f"ac{tag}-{os.getpid()}")
    store = load_state_store_class("valkey").from_options(opts)
    await store.start()  # loads this tree's library: replaced below
    try:
        await raw.function_load(library, replace=True)  # type: ignore[misc]
        await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=calls + 10)}))
        slots = [SlotView(replica_id="r1", set_key="A", ready=True, slots=calls + 10)]
        await store.set_replicas("p", slots)
        await raw.config_resetstat()
        for i in range(calls):
            await store.submit_dispatch(
                TaskSpec(task_id=f"t{i:06d}", pool="p", priority="batch", request=b"x" * 200),
                "instance-0123456789abcdef0123456789abcdef",
                60_000,
            )
        stats = await raw.info("commandstats")
        return float(stats["cmdstat_fcall"]["usec_per_call"])
    finally:
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    before = (args.before / LUA).read_text(encoding="utf-8")
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    got: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp, valkey_server(Path(tmp)) as url:
        raw = valkey.Valkey.from_url(url)
        try:
            for r in range(args.rounds):
                for side, lib in (("before", before), ("after", LIBRARY)):
                    got[side].append(await _phase(url, raw, lib, f"{side}{r}", args.calls))
        finally:
            await raw.aclose()
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    b, a = statistics.median(got["before"]), statistics.median(got["after"])
    text = "\n".join(
        [
            "# llorch_submit_dispatch before/after the admitter "
            f"({time.strftime('%Y-%m-%d %H:%M')})",
            "",
            f"`uv run python bench/admitter_cost.py --before {args.before} --calls {args.calls} "
            f"--rounds {args.rounds}`: cores {os.cpu_count()}, load average {load0} at the start "
            f"and {load1} at the end.",
            "",
            "| side | server µs per call, each round | median |",
            "|---|---|---|",
            f"| before | {', '.join(f'{x:.2f}' for x in got['before'])} | {b:.2f} |",
            f"| after | {', '.join(f'{x:.2f}' for x in got['after'])} | {a:.2f} |",
            "",
            f"after / before: {a / b:.3f}",
            "",
        ]
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
