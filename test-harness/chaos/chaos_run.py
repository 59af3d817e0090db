"""Chaos and load runner: real llama-server engines behind fault proxies, orchestratord
as a daemon, a seeded load, faults on a schedule, then the invariant check and report.

    uv run --frozen python test-harness/chaos/chaos_run.py --profile ci --seed 7
    nohup uv run --frozen python test-harness/chaos/chaos_run.py --long > chaos-long.log 2>&1 &

Topology (``chaos_topology.py``): N engines (SmolLM2-135M, a few slots each) ← one FaultProxy each ←
orchestratord (pool ``chaos``, ``endpoints:`` = the proxies, auth with one key
per tenant) ← the load clients. Every process is started in its own process
group and stopped by PID group in a ``finally`` (never by name). Faults are injected by
``chaos_faults.py``, the load by ``chaos_clients.py``. ORCH-6100, ORCH-6104.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import chaos_check  # noqa: E402
import chaos_figures  # noqa: E402
import chaos_plan  # noqa: E402
import chaos_report  # noqa: E402
from chaos_clients import LoadClients  # noqa: E402
from chaos_faults import FaultInjector  # noqa: E402
from chaos_procs import DRAIN_TIMEOUT_S, STREAM_TIMEOUT_S, Engine, log, now, prompt_len  # noqa: E402
from chaos_state import RunState  # noqa: E402
from chaos_topology import Topology  # noqa: E402


class Runner:
    def __init__(self, prof: chaos_plan.Profile, seed: int, outdir: Path, workdir: Path) -> None:
        self.prof, self.seed = prof, seed
        self.plan = chaos_plan.make_plan(prof, seed)
        self.outdir, self.workdir = outdir, workdir
        self.topo = Topology(prof, workdir)
        self.state = RunState()
        self.faults = FaultInjector(self.topo, self.state)
        self.clients = LoadClients(self.topo, self.state, seed)
        self.slot_samples: dict[str, list[dict[str, Any]]] = {}
        self.stalls: list[list[float]] = []  # [start, seconds] of the runner's loop stalls

    async def monitor_slots(self, http: aiohttp.ClientSession, e: Engine) -> None:
        series = self.slot_samples.setdefault(str(e.index), [])
        last: Any = None
        while not self.state.stopping.is_set():
            t_sent = now()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, TypeError):
                # A poll waits for the engine's current batch step; a longer timeout keeps
                # the answer right after a slow step instead of a gap in the series.
                async with http.get(e.url + "/slots", timeout=aiohttp.ClientTimeout(5)) as r:
                    body = await r.json()
                t = now()
                if not isinstance(body, list):  # an error answer (engine busy or stopping)
                    raise ValueError(str(body)[:200])
                slots = [
                    {
                        "id": s.get("id"),
                        "is_processing": bool(s.get("is_processing")),
                        "id_task": s.get("id_task") if s.get("is_processing") else None,
                        "prompt_len": prompt_len(s),
                    }
                    for s in body
                ]
                if slots != last:
                    # the state was seen between t_sent and t (an upper bound)
                    series.append({"t": t, "t_sent": t_sent, "slots": slots})
                    last = slots
            # 20 ms between polls: the first poll that sees the slot free bounds the
            # figure from above, so the period adds to every cancel sample.
            await asyncio.sleep(0.02)

    async def watch_loop(self) -> None:
        """ORCH-6255: the runner's own stalls (a 10 ms tick late by more than 50 ms):
        what the clients and monitors stamp inside one is stamped late."""
        while not self.state.stopping.is_set():
            t = now()
            await asyncio.sleep(0.01)
            late = now() - t - 0.01
            if late > 0.05:
                self.stalls.append([t + 0.01, late])

    # ----------------------------------------------------------------- faults

    async def run(self) -> dict[str, Any]:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            try:
                log(f"starting {self.prof.engines} engines and orchestratord")
                await self.topo.start(http)
                log(
                    f"ready; plan {self.plan.digest[:16]}: {len(self.plan.arrivals)} arrivals, "
                    f"{len(self.plan.faults)} faults over {self.prof.duration_s:.0f}s"
                )
                monitors = [
                    asyncio.create_task(self.monitor_slots(http, e)) for e in self.topo.engines
                ]
                monitors.append(asyncio.create_task(self.watch_loop()))
                if self.topo.pm is not None:
                    monitors.append(
                        asyncio.create_task(self.topo.pm.monitor(http, self.state.stopping))
                    )
                self.state.t0 = time.monotonic()
                t_load0 = now()
                clients = [
                    asyncio.create_task(self.clients.client(http, a)) for a in self.plan.arrivals
                ]
                faults = [
                    asyncio.create_task(self.faults.inject(http, f)) for f in self.plan.faults
                ]
                await asyncio.gather(*faults)
                await asyncio.sleep(
                    max(0.0, self.state.t0 + self.prof.duration_s - time.monotonic())
                )
                t_load1 = now()
                log("load phase over; draining")
                pending = set(clients)
                t_drain = time.monotonic()
                while pending and time.monotonic() - t_drain < DRAIN_TIMEOUT_S + STREAM_TIMEOUT_S:
                    _, pending = await asyncio.wait(pending, timeout=10)
                    if pending:
                        log(f"draining: {len(pending)} clients still running")
                done = set(clients) - pending
                for c in pending:
                    c.cancel()
                for c in done:
                    if c.exception() is not None:
                        raise c.exception()  # type: ignore[misc]
                # No engine slot may stay busy once every client is done (≤ 15 s to settle).
                slots_after: dict[str, Any] = {}
                for _ in range(150):
                    slots_after = {}
                    for name, url in await self.topo.engine_urls(http):
                        try:
                            async with http.get(url + "/slots") as r:
                                slots_after[name] = await r.json()
                        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                            slots_after[name] = [{"id": -1, "error": repr(exc)[:200]}]
                    if not any(
                        s.get("is_processing") or "error" in s
                        for v in slots_after.values()
                        for s in v
                    ):
                        break
                    await asyncio.sleep(0.1)
                self.state.stopping.set()
                await asyncio.gather(*monitors)
                sem = asyncio.Semaphore(8)

                async def one(r: dict[str, Any]) -> None:
                    async with sem:
                        await self.clients.replay(http, r)

                await asyncio.gather(*(one(r) for r in self.state.records.values() if r["task_id"]))
                counters = {str(e.index): await e.token_counters(http) for e in self.topo.engines}
                async with http.get(self.topo.orch_url + "/metrics") as r:
                    orch_metrics = await r.text()
            finally:
                self.state.stopping.set()
                await self.topo.stop()
        ends = []
        for line in self.topo.orch_log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("msg") == "task ended":
                    ends.append(doc)
        history = {
            "profile": self.prof.name,
            "seed": self.seed,
            "plan_digest": self.plan.digest,
            "plan": self.plan.to_json(),
            "started": started,
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
            "load_window": [t_load0, t_load1],
            "weights": {t.name: t.weight for t in self.prof.tenants},
            "max_turns": 8,
            # the config keeps the defaults of max_turns and of the log retention
            "event_log_retention_s": 600.0,
            "quotas": {t.name: t.max_concurrent for t in self.prof.tenants if t.max_concurrent},
            "tasks": [self.state.records[k] for k in sorted(self.state.records)],
            # no proxies in front of pool-managerd's engines: no exchanges recorded, and
            # the checks that need them are not run (ORCH-6114)
            "exchanges": None
            if self.topo.pm is not None
            else [vars(x) for p in self.topo.proxies for x in p.exchanges],
            "pool_managerd_samples": None if self.topo.pm is None else self.topo.pm.samples,
            "slot_samples": self.slot_samples,
            "runner_stalls": self.stalls,
            # ORCH-6242: the engines' own slot lines, per incarnation (none from
            # pool-managerd's engines: their logs are its own)
            "engine_logs": {str(e.index): e.slot_logs() for e in self.topo.engines},
            "slots_after_run": {
                k: [
                    {
                        "id": s["id"],
                        "is_processing": s.get("is_processing"),
                        "error": s.get("error"),
                    }
                    for s in v
                ]
                for k, v in slots_after.items()
            },
            "daemon_task_ends": ends,
            # With the store, the daemon's own account (one task-end line per task, its
            # counters) is not the task's: a kill -9 loses the log line and the counters,
            # and a run this instance stopped (store unreachable for a lease) is continued
            # from the store's log. The store's log is checked instead (ORCH-6111).
            "daemon_account": not self.prof.store,
            "store": self.prof.store,
            "orchestratord_restarts": self.topo.orch_restarts,
            "faults": self.state.faults_done,
            "engine_token_counters_end": counters,
            "orch_metrics_tasks": [
                ln
                for ln in orch_metrics.splitlines()
                if ln.startswith(("llorch_tasks", "orchd_tasks", "tasks_"))
                and not ln.startswith("#")
            ][:400],
        }
        return history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(chaos_plan.PROFILES), default="ci")
    ap.add_argument("--long", action="store_true", help="the nightly profile (30 minutes)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "reports")
    ap.add_argument("--plan-only", action="store_true", help="print the plan digest and exit")
    ap.add_argument(
        "--recheck",
        type=Path,
        metavar="HISTORY",
        help="check a recorded <base>.history.json.gz again and rewrite its report",
    )
    args = ap.parse_args(argv)
    if args.recheck:
        return recheck(args.recheck)
    prof = chaos_plan.PROFILES["long" if args.long else args.profile]
    if args.plan_only:
        plan = chaos_plan.make_plan(prof, args.seed)
        print(
            json.dumps(
                {
                    "digest": plan.digest,
                    "arrivals": len(plan.arrivals),
                    "faults": [vars(f) for f in plan.faults],
                }
            )
        )
        return 0
    rc, _ = run_profile(prof, args.seed, args.out)
    return rc


def recheck(path: Path) -> int:
    """The checks and figures are pure functions of the history: run them again
    (after a checker change) and rewrite the report; the report says so."""
    with gzip.open(path, "rt") as f:
        history = json.load(f)
    history["rechecked"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    violations = chaos_check.check(history)
    figs = chaos_figures.figures(history, violations)
    base = path.parent / path.name.removesuffix(".history.json.gz")
    chaos_report.write(base, history, violations, figs)
    log(f"report: {base}.md")
    return 0 if not violations and figs["lost"] == 0 else 1


def run_profile(prof: chaos_plan.Profile, seed: int, out: Path) -> tuple[int, Path]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = out / "work" / f"{prof.name}-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(prof, seed, out, work)
    history = asyncio.run(runner.run())
    violations = chaos_check.check(history)
    figs = chaos_figures.figures(history, violations)
    base = out / f"{prof.name}-seed{seed}-{stamp}"
    chaos_report.write(base, history, violations, figs)
    log(f"report: {base}.md")
    return (0 if not violations and figs["lost"] == 0 else 1), base


if __name__ == "__main__":
    sys.exit(main())
