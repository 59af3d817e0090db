"""Scaling across processes: ``orchestratord --workers N`` for N = 1, 2, 4 (issue #20, ORCH-2755).

    uv run bench/scaling.py [--workers 1,2,4] [--seconds 8] [-c 64]

One Valkey (``llama_orch.state_valkey.EmbeddedServer``, the shared state store
every worker uses), one fake engine at 0 ms/token and, per N, one
``orchestratord --workers N`` on a fixed port (SO_REUSEPORT, ORCH-2752), ready
when ``/v1/capabilities`` lists N live instances. ``wrk`` (bench/native_load.py)
drives the one-request path (``POST /v1/tasks`` with ``Accept: text/event-stream``)
and the fake engine directly, side by side per N. Prints and writes the cores
this process may run on and the load average before each N: the speed-up from
1 to 2 processes needs 2 idle cores, which a shared 2-core machine does not have
(the fake engine, wrk and Valkey run on the same cores).

Writes ``bench/results/<date>-scaling.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from native_load import run_wrk  # noqa: E402
from procs import Procs, http_get, log, start_fake, start_orch  # noqa: E402


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_instances(url: str, n: int, timeout: float = 60.0) -> list[str]:
    """The live instances once ``n`` share the store (each worker registers one)."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        try:
            caps = json.loads(http_get(url + "/v1/capabilities"))
            live = (caps.get("state_store") or {}).get("instances") or []
            seen |= {caps["state_store"]["instance_id"]}
            if len(live) >= n:
                return list(live)
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{n} instances not live in {timeout}s (saw {sorted(seen)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("-c", "--concurrency", type=int, default=64)
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--desc", default="scaling")
    args = ap.parse_args()
    from llama_orch.state_valkey import EmbeddedServer

    ns = [int(x) for x in args.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="llama-orch-scaling-"))
    procs = Procs(tmp)
    server = EmbeddedServer(tmp / "valkey")
    cores = len(os.sched_getaffinity(0))
    res: dict[str, Any] = {
        "command": "uv run bench/scaling.py " + " ".join(sys.argv[1:]),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cores_usable": cores,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rows": [],
    }
    log(f"{cores} usable cores (os.cpu_count {os.cpu_count()}), load average {loadavg()}")
    try:
        valkey = server.start()
        furl, fpid = start_fake(procs, "fake-0ms", 0.0)
        for n in ns:
            la = loadavg()
            ourl, op = start_orch(
                procs,
                f"orch-w{n}",
                furl,
                tmp,
                state={"backend": "valkey", "url": valkey, "key_prefix": f"scale{n}"},
                args=["--workers", str(n)],
            )
            try:
                live = wait_instances(ourl, n)
                log(f"--workers {n}: {len(live)} live instances, load average {la}")
                direct = run_wrk(furl, "llama", args.concurrency, args.seconds, watch={"e": fpid})
                relayed = run_wrk(
                    ourl,
                    "stream",
                    args.concurrency,
                    args.seconds,
                    watch={"orch": op.pid, "engine": fpid},
                )
                row = {
                    "workers": n,
                    "instances": len(live),
                    "loadavg_before": la,
                    "direct": direct,
                    "relayed": relayed,
                }
                res["rows"].append(row)
                log(
                    f"  direct {direct['req_per_s']:.0f} req/s, relayed "
                    f"{relayed['req_per_s']:.0f} req/s (bad {relayed['bad']}), orchestratord "
                    f"CPU {relayed['cpu_s'].get('orch', 0):.2f} s in {args.seconds:g} s"
                )
            finally:
                procs.stop(op)
    finally:
        procs.stop_all()
        server.stop()
    res["loadavg_end"] = loadavg()
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    base = Path(args.out_dir) / f"{stamp}-{args.desc}"
    base.with_suffix(".json").write_text(json.dumps(res, indent=1))
    md = report(res)
    base.with_suffix(".md").write_text(md)
    print(md)
    return 0


def report(res: dict[str, Any]) -> str:
    rows = res["rows"]
    one = next((r for r in rows if r["workers"] == 1), None)
    L = [
        f"# Scaling over processes: orchestratord --workers N — {res['started']}",
        "",
        f"Command: `{res['command']}`. Cores usable: **{res['cores_usable']}** "
        f"(os.cpu_count {res['cpu_count']}); load average at the end {res['loadavg_end']}. "
        f"wrk, c={res['concurrency']}, {res['seconds']:g} s per side, one-request path "
        "(`POST /v1/tasks`, `Accept: text/event-stream`), fake engine 0 ms/token, 32 tokens; "
        "every worker on one Valkey (shared queue, fairness, quotas). The fake engine, wrk "
        "and Valkey share the same cores, so N workers only scale where idle cores exist.",
        "",
        "| workers | live instances | load avg before | req/s direct | req/s relayed | "
        "relayed / direct | vs 1 worker | orch CPU s (all workers) | CPU ms/req | bad+errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, o = r["direct"], r["relayed"]
        cpu = o["cpu_s"].get("orch", 0.0)
        errs = o["bad"] + o["connect"] + o["read"] + o["write"] + o["timeout"]
        vs1 = (
            o["req_per_s"] / one["relayed"]["req_per_s"]
            if one and one["relayed"]["req_per_s"]
            else 0
        )
        L.append(
            f"| {r['workers']} | {r['instances']} | {r['loadavg_before']} | "
            f"{d['req_per_s']:.0f} | {o['req_per_s']:.0f} | "
            f"{o['req_per_s'] / d['req_per_s'] * 100 if d['req_per_s'] else 0:.0f} % | "
            f"{vs1:.2f}x | {cpu:.2f} | {cpu * 1000 / o['good'] if o['good'] else 0:.2f} | {errs} |"
        )
    L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    raise SystemExit(main())
