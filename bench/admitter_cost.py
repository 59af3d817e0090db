#!/usr/bin/env python3
"""What a change of the llorch library costs the store on the request path: first
written for the admitting instance's field (ORCH-2603), used again for the index of
running tasks (ORCH-2606, ORCH-2608). The library before the change (``--before``: a
checkout's ``llorch.lua``) against this tree's, on one embedded valkey-server, loaded
in turn (``FUNCTION LOAD REPLACE``) and measured ``--rounds`` times with ``--calls``
tasks each: every task admitted and dispatched by one ``llorch_submit_dispatch`` (on a
fresh key prefix with free slots), then ended by one terminal ``llorch_append`` (the
dispatch path and the terminal path, measured apart); then, for the index of queued
tasks (ORCH-2614), ``--calls`` tasks admitted with no free slot (``llorch_submit``),
dispatched one by one once slots appear (``llorch_dispatch``), and ``--calls`` more
admitted and canceled while queued (``llorch_cancel``). The sides run in turn, before
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
from small_report import emit

LUA = "packages/state-valkey/src/llama_orch/state_valkey/llorch.lua"
PATHS = (
    ("dispatch", "llorch_submit_dispatch"),
    ("terminal", "llorch_append"),
    ("queued submit", "llorch_submit"),
    ("queued dispatch", "llorch_dispatch"),
    ("queued cancel", "llorch_cancel"),
)


async def _fcall_us(raw: valkey.Valkey) -> float:
    stats = await raw.info("commandstats")
    return float(stats["cmdstat_fcall"]["usec_per_call"])


async def _phase(
    url: str, raw: valkey.Valkey, library: str, tag: str, calls: int
) -> dict[str, float]:
    opts = StateOptions(backend="valkey", url=url, key_prefix=f"ac{tag}-{os.getpid()}")
    store = load_state_store_class("valkey").from_options(opts)
    await store.start()  # loads this tree's library: replaced below
    try:
        await raw.function_load(library, replace=True)  # type: ignore[misc]
        pools = {x: PoolPolicy(capacity=calls + 10) for x in ("p", "q", "c")}
        await store.configure(StoreConfig(pools=pools))
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
        got = {"dispatch": await _fcall_us(raw)}
        await raw.config_resetstat()
        for d in runs:
            await store.append(d.task.task_id, d.epoch, [Event("end", b"{}")])
        got["terminal"] = await _fcall_us(raw)
        # a task that waits (ORCH-2614): admitted with no free slot, then dispatched
        # alone; another admitted and canceled while queued
        for pool, path in (("q", "queued submit"), ("c", None)):
            await raw.config_resetstat()
            for i in range(calls):
                spec = TaskSpec(task_id=f"{pool}{i:06d}", pool=pool, priority="batch")
                await store.submit(spec, "instance-0123456789abcdef0123456789abcdef")
            if path:
                got[path] = await _fcall_us(raw)
        await store.set_replicas("q", slots)
        await raw.config_resetstat()
        for _ in range(calls):
            d = await store.dispatch("q", "instance-0123456789abcdef0123456789abcdef", 60_000)
            assert isinstance(d, Dispatched)
        got["queued dispatch"] = await _fcall_us(raw)
        await raw.config_resetstat()
        for i in range(calls):
            await store.cancel(f"c{i:06d}")
        got["queued cancel"] = await _fcall_us(raw)
        return got
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
                    for path, us in (await _phase(url, raw, lib, f"{side}{r}", args.calls)).items():
                        got.setdefault((side, path), []).append(us)
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
    for path, call in PATHS:
        for side in ("before", "after"):
            xs = got[(side, path)]
            lines.append(
                f"| {path} (`{call}`) | {side} | {', '.join(f'{x:.2f}' for x in xs)} "
                f"| {statistics.median(xs):.2f} |"
            )
    for path, _ in PATHS:
        b = statistics.median(got[("before", path)])
        a = statistics.median(got[("after", path)])
        lines.append(f"\n{path}: after / before {a / b:.3f} ({a - b:+.2f} µs)")
    emit(lines, args.out)


if __name__ == "__main__":
    asyncio.run(main())
