#!/usr/bin/env python3
"""What a change of the llorch library costs the store on the request path: first
written for the admitting instance's field (ORCH-2603), used again for the index of
running tasks (ORCH-2606, ORCH-2608). The library before the change (``--before``: a
checkout's ``llorch.lua``) against this tree's, on one embedded valkey-server, loaded
in turn (``FUNCTION LOAD REPLACE``) and measured ``--rounds`` times with ``--calls``
tasks each: every task admitted and dispatched by one ``llorch_submit_dispatch`` (on a
fresh key prefix with free slots), then ended by one terminal ``llorch_append`` (the
dispatch path and the terminal path, measured apart). The sides run in turn, before
first in even rounds and after first in odd ones (an order effect of ~10 % was seen
with one order only). Server time per call is Valkey's own (``INFO commandstats``,
``cmdstat_fcall`` ``usec_per_call``, reset before each path).

    uv run python bench/admitter_cost.py --before /work/main [--calls 3000] [--rounds 4]
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
    Dispatched,
    Event,
    PoolPolicy,
    SlotView,
    StoreConfig,
    TaskSpec,
    load_state_store_class,
)
from llama_orch.state_valkey._store import LIBRARY
from llama_orch.testing_engines.valkey import valkey_server

LUA = "packages/state-valkey/src/llama_orch/state_valkey/llorch.lua"


async def _fcall_us(raw: valkey.Valkey) -> float:
    stats = await raw.info("commandstats")
    return float(stats["cmdstat_fcall"]["usec_per_call"])


async def _phase(
    url: str, raw: valkey.Valkey, library: str, tag: str, calls: int
) -> tuple[float, float]:
    opts = StateOptions(backend="valkey", url=url, key_prefix=f"ac{tag}-{os.getpid()}")
    store = load_state_store_class("valkey").from_options(opts)
    await store.start()  # loads this tree's library: replaced below
    try:
        await raw.function_load(library, replace=True)  # type: ignore[misc]
        await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=calls + 10)}))
        slots = [SlotView(replica_id="r1", set_key="A", ready=True, slots=calls + 10)]
        await store.set_replicas("p", slots)
        await raw.config_resetstat()
        runs = []
        for i in range(calls):
            _, d = await store.submit_dispatch(
                TaskSpec(task_id=f"t{i:06d}", pool="p", priority="batch", request=b"x" * 200),
                "instance-0123456789abcdef0123456789abcdef",
                60_000,
            )
            assert isinstance(d, Dispatched)
            runs.append(d)
        dispatch_us = await _fcall_us(raw)
        await raw.config_resetstat()
        for d in runs:
            await store.append(d.task.task_id, d.epoch, [Event("end", b"{}")])
        return dispatch_us, await _fcall_us(raw)
    finally:
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    before = (args.before / LUA).read_text(encoding="utf-8")
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    got: dict[tuple[str, str], list[float]] = {}
    sides = [("before", before), ("after", LIBRARY)]
    with tempfile.TemporaryDirectory() as tmp, valkey_server(Path(tmp)) as url:
        raw = valkey.Valkey.from_url(url)
        try:
            for r in range(args.rounds):
                for side, lib in sides if r % 2 == 0 else sides[::-1]:
                    d_us, t_us = await _phase(url, raw, lib, f"{side}{r}", args.calls)
                    got.setdefault((side, "dispatch"), []).append(d_us)
                    got.setdefault((side, "terminal"), []).append(t_us)
        finally:
            await raw.aclose()
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"# llorch library before/after on the request path ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`uv run python bench/admitter_cost.py --before {args.before} --calls {args.calls} "
        f"--rounds {args.rounds}`: cores {os.cpu_count()}, load average {load0} at the start "
        f"and {load1} at the end. Rounds alternate the order: before first in rounds 1, 3, …",
        "",
        "| path | side | server µs per call, each round | median |",
        "|---|---|---|---|",
    ]
    for path, call in (("dispatch", "llorch_submit_dispatch"), ("terminal", "llorch_append")):
        for side in ("before", "after"):
            xs = got[(side, path)]
            lines.append(
                f"| {path} (`{call}`) | {side} | {', '.join(f'{x:.2f}' for x in xs)} "
                f"| {statistics.median(xs):.2f} |"
            )
    for path in ("dispatch", "terminal"):
        b = statistics.median(got[("before", path)])
        a = statistics.median(got[("after", path)])
        lines.append(f"\n{path}: after / before {a / b:.3f} ({a - b:+.2f} µs)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
