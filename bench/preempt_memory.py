#!/usr/bin/env python3
"""The cost of the memory store's ``preempt`` with N running tasks (issue #13, ORCH-2619).

``MemoryStateStore.preempt`` (ORCH-2597, ``state: {backend: memory}`` under
``placement: hard``) is called by every empty dispatch under ``hard`` while the head
has no victim recorded; it runs in the event loop, blocking it for its time. This bench
times it in-process: N runs of one owner on one replica, plus ``--ended`` ended tasks
still retained, and one queued interactive head; rows as ``bench/preempt_scan.py``'s
(no eligible run, a victim chosen each call). It also times the calls the run index
(ORCH-2617) adds upkeep to: ``submit_dispatch`` of a task that starts, a terminal
``append`` and a ``cancel`` of a running task (``--path`` calls each).

``--before CHECKOUT`` runs each side in its own subprocess, the other checkout's
``packages/core/src`` first on ``PYTHONPATH`` for "before" (this script's code for
both), in the order before, after, after, before; each row pools both rounds' calls.

    uv run python bench/preempt_memory.py [--sizes 100,1000,10000] [--ended 0] [--calls 200]
        [--path 2000] [--before CHECKOUT] [--out results.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import llama_orch.core.state_memory as state_memory
from llama_orch.core.state_store import (
    Dispatched,
    Event,
    PoolPolicy,
    SlotView,
    StoreConfig,
    TaskSpec,
)
from small_report import emit

LEASE_MS = 3_600_000


async def _time(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        lat.append((time.perf_counter() - t0) * 1e6)
    return lat


def _summary(lat: list[float]) -> dict[str, float]:
    lat = sorted(lat)
    return {"p50_us": statistics.median(lat), "p99_us": lat[max(0, int(len(lat) * 0.99) - 1)]}


async def _size(n: int, ended: int, calls: int) -> dict[str, list[float]]:
    now = [1000.0]
    store = state_memory.MemoryStateStore(clock=lambda: now[0])
    await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=n + ended + 10)}))
    slots = n + ended + 10
    await store.set_replicas("p", [SlotView(replica_id="r1", set_key="A", ready=True, slots=slots)])
    await store.heartbeat("i1", LEASE_MS)
    for i in range(ended):
        spec = TaskSpec(task_id=f"end{i:06d}", pool="p", priority="batch")
        _, d = await store.submit_dispatch(spec, "i1", LEASE_MS)
        assert isinstance(d, Dispatched)
        await store.append(spec.task_id, d.epoch, [Event("end", b"{}")])
    for i in range(n):
        spec = TaskSpec(task_id=f"run{i:06d}", pool="p", priority="batch")
        _, d = await store.submit_dispatch(spec, "i1", LEASE_MS)
        assert isinstance(d, Dispatched)
    await store.set_replicas("p", [SlotView(replica_id="r1", set_key="A", ready=True, slots=n)])
    await store.submit(TaskSpec(task_id="head", pool="p", priority="interactive"))
    assert await store.preempt("p", "i2", ["elsewhere"], LEASE_MS) is None

    async def victim() -> None:
        now[0] += 1.0  # past the previous choice's ttl: a victim every call
        assert await store.preempt("p", "i1", ["r1"], 1) is not None

    return {
        "dispatch (baseline)": await _time(lambda: store.dispatch("p", "i2", LEASE_MS), calls),
        "preempt, no victim": await _time(
            lambda: store.preempt("p", "i2", ["elsewhere"], LEASE_MS), calls
        ),
        "preempt, victim": await _time(victim, calls),
    }


async def _path(m: int) -> dict[str, list[float]]:
    """µs per call of the steps the run index adds upkeep to: ``submit_dispatch`` of a
    task that starts (M runs on one replica), then a terminal ``append`` of every other
    one and a ``cancel`` of the rest (oldest first)."""
    store = state_memory.MemoryStateStore(clock=lambda: 1000.0)
    await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=m + 10)}))
    await store.set_replicas("p", [SlotView(replica_id="r1", set_key="A", ready=True, slots=m)])
    epochs: dict[str, int] = {}
    lat: dict[str, list[float]] = {"submit_dispatch (starts)": [], "append (terminal)": []}
    lat["cancel (running)"] = []
    for i in range(m):
        spec = TaskSpec(task_id=f"run{i:06d}", pool="p", priority="batch")
        t0 = time.perf_counter()
        _, d = await store.submit_dispatch(spec, "i1", LEASE_MS)
        lat["submit_dispatch (starts)"].append((time.perf_counter() - t0) * 1e6)
        assert isinstance(d, Dispatched)
        epochs[spec.task_id] = d.epoch
    end = [Event("end", b"{}")]
    for n, (tid, epoch) in enumerate(epochs.items()):
        t0 = time.perf_counter()
        if n % 2:
            assert await store.cancel(tid) == "running"
            lat["cancel (running)"].append((time.perf_counter() - t0) * 1e6)
        else:
            await store.append(tid, epoch, end)
            lat["append (terminal)"].append((time.perf_counter() - t0) * 1e6)
    return lat


async def _side(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    rows: dict[str, dict[str, list[float]]] = {}
    for n in map(int, args.sizes.split(",")):
        rows[str(n)] = await _size(n, args.ended, args.calls)
    if args.path:
        rows["path"] = await _path(args.path)
    return rows


def _subprocess(args: argparse.Namespace, overlay: Path | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--json", "--sizes", args.sizes, "--ended", str(args.ended)]
    cmd += ["--calls", str(args.calls), "--path", str(args.path)]
    env = dict(os.environ)
    if overlay is not None:  # the other checkout's core first on the path
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(overlay), env.get("PYTHONPATH")]))
    out = subprocess.run(cmd, env=env, capture_output=True, check=True, timeout=1800, text=True)
    got: dict[str, Any] = json.loads(out.stdout)
    return got


def _run(
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, dict[str, list[float]]]], dict[str, str]]:
    """Each side's rows, both rounds' calls pooled, and the module each side loaded."""
    if args.before is None:
        return {"after": asyncio.run(_side(args))}, {"after": state_memory.__file__}
    overlays = {"before": args.before.resolve() / "packages" / "core" / "src", "after": None}
    sides: dict[str, dict[str, dict[str, list[float]]]] = {}
    files: dict[str, str] = {}
    for name in ("before", "after", "after", "before"):
        got = _subprocess(args, overlays[name])
        files[name] = got.pop("module")
        for row, calls in got.items():
            for call, lat in calls.items():
                sides.setdefault(name, {}).setdefault(row, {}).setdefault(call, []).extend(lat)
    return sides, files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--ended", type=int, default=0)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--path", type=int, default=2000, help="tasks for the path rows (0: none)")
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one side's calls
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.json:
        rows: dict[str, Any] = asyncio.run(_side(args))
        print(json.dumps({**rows, "module": state_memory.__file__}))
        return
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sides, files = _run(args)
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    names = list(sides)
    before = "" if args.before is None else f" --before {args.before}"
    lines = [
        f"# The memory store's `preempt` with N running tasks ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`uv run python bench/preempt_memory.py --sizes {args.sizes} --ended {args.ended} "
        f"--calls {args.calls} --path {args.path}{before}`: cores {os.cpu_count()}, load "
        f"average {load0} at the start and {load1} at the end. Modules: "
        + ", ".join(f"{k} `{v}`" for k, v in files.items())
        + (
            ". Sides run before, after, after, before; each row pools both rounds."
            if args.before
            else "."
        ),
        "",
        "| N running | call | " + " | ".join(f"{k} p50 µs | {k} p99 µs" for k in names) + " |",
        "|---|---|" + "---|---|" * len(names),
    ]
    for row, calls in sides[names[0]].items():
        for call in calls:
            cells = []
            for k in names:
                m = _summary(sides[k][row][call])
                cells.append(f"{m['p50_us']:.1f} | {m['p99_us']:.1f}")
            label = f"{row} (+{args.ended} ended)" if row != "path" and args.ended else row
            lines.append(f"| {label} | {call} | " + " | ".join(cells) + " |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
