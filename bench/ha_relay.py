#!/usr/bin/env python3
"""orchestratord on a state store, memory vs valkey, through real processes (ORCH-2557).

One run, against one fast fake engine (``bench/fake_engine.py``, 0 ms per token),
with the closed-loop load generator ``bench/loadgen.py`` in its own process:

* **admissions+dispatches/s per instance**: ``POST /v1/tasks`` + stream of a
  1-token task (each request is one admission and one dispatch at the store),
  c=16;
* **orchestratord CPU per request** (1-token tasks) and **per relayed token**
  ((CPU of 128-token tasks - CPU of 1-token tasks) / 127 tokens);
* **relayed tokens/s** with 128-token tasks, with 1 orchestratord process and with
  2 processes on one Valkey (two load generators, one per instance, as a load
  balancer would spread them; the figures are summed).

Rows: no ``state:`` section at all (``none x1``: what the store's CPU is added to;
the report prints each row's CPU per request and per token minus this row's),
``state: {backend: memory}`` (one process; a memory store is not shared)
and ``state: {backend: valkey, url}`` on one embedded valkey-server (AOF on,
``appendfsync everysec``). The machine's cores and load average are printed: on a
loaded 2-core machine the processes compete for the same cores, so read the ratios
measured side by side, not the absolute figures.

    uv run python bench/ha_relay.py [--requests 400] [--before CHECKOUT] [--out ...md]

``--before`` adds ``memory x1 (before)`` and ``valkey x1 (before)`` rows run on another
checkout's sources, side by side in the same run. ``--repeats R`` (ORCH-2620,
``ha_relay_paired.py``): every row's process runs the whole run and the rows are
measured interleaved, R rounds; per row the median and spread of the rounds, and what
a row adds as the median of paired differences (with ``--before``, each valkey side
on a valkey-server of its own). ``--replicas 2`` gives the pool two
replicas (two fake engines), so that each dispatch has a placement choice to make
(ORCH-2572..2578); the extra store calls a placement policy made (``move``) are
counted from each instance's ``state_store_op_ms`` after its row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ha_relay_paired import order, round_figures, table
from procs import HERE, PY, Procs, log, start_fake, start_orch
from small_report import emit

C = 16


def _start_fakes(procs: Procs, replicas: int) -> tuple[str | list[str], int]:
    """The pool's fake engines at 0 ms/token: one URL, or a list with ``--replicas``;
    the first engine's pid (the CPU it is charged with)."""
    furl, fpid = start_fake(procs, "fake-0ms", 0.0)
    if replicas <= 1:
        return furl, fpid
    more = [start_fake(procs, f"fake-0ms-{n}", 0.0)[0] for n in range(1, replicas)]
    return [furl, *more], fpid


def _loadgen_cmd(url: str, n: int, max_tokens: int, watch: dict[str, int]) -> list[str]:
    return [
        PY,
        str(HERE / "loadgen.py"),
        "--mode",
        "orch",
        "--url",
        url,
        "--concurrency",
        str(C),
        "--requests",
        str(n),
        "--max-tokens",
        str(max_tokens),
        "--cap-s",
        "120",
        *(f"--watch={k}={v}" for k, v in watch.items()),
    ]


def _loadgens(cmds: list[list[str]]) -> list[dict[str, Any]]:
    """Run load generators at the same time; their JSON results."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cmds]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"loadgen failed: {stderr.decode()[-2000:]}")
        out.append(json.loads(stdout))
    return out


def measure(urls: list[str], pids: dict[str, int], n: int) -> dict[str, Any]:
    """1-token and 128-token runs, one load generator per instance, side by side."""
    row: dict[str, Any] = {"instances": len(urls)}
    for toks in (1, 128):
        per = n if toks == 1 else max(50, n // 2)
        res = _loadgens([_loadgen_cmd(u, per, toks, pids) for u in urls])
        ok = sum(r["ok"] for r in res)
        wall = max(r["wall_s"] for r in res)
        # every load generator watched every process over (about) the same phase:
        # take the longest-running one's CPU figures
        cpu = max(res, key=lambda r: r["wall_s"])["cpu_s"]
        orch_cpu = sum(v for k, v in cpu.items() if k.startswith("orch"))
        row[f"t{toks}"] = {
            "ok": ok,
            "errors": sum(r["errors"] for r in res),
            "short": sum(r["short_streams"] for r in res),
            "req_per_s": ok / wall if wall else 0.0,
            "tok_per_s": sum(r["tokens"] for r in res) / wall if wall else 0.0,
            "ttft50_ms": res[0]["ttft_ms"]["50"],
            "orch_cpu_ms_per_req": orch_cpu * 1000 / ok if ok else None,
            "store_cpu_ms_per_req": cpu.get("valkey", 0.0) * 1000 / ok if ok else None,
            "engine_cpu_ms_per_req": cpu.get("engine", 0.0) * 1000 / ok if ok else None,
        }
    a, b = row["t1"]["orch_cpu_ms_per_req"], row["t128"]["orch_cpu_ms_per_req"]
    row["orch_cpu_us_per_token"] = (b - a) * 1000 / 127 if a is not None and b is not None else None
    return row


def _calls(calls: dict[str, int] | None) -> str:
    if calls is None:
        return "-"
    return f"{sum(calls.values())} ({calls.get('move', 0)})"


def store_calls(url: str) -> dict[str, int]:
    """The instance's store calls by op so far (``state_store_op_ms_count``)."""
    import re
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    calls = re.findall(r'^state_store_op_ms_count\{op="(\w+)"\} ([0-9.e+]+)$', text, re.M)
    return {op: int(float(n)) for op, n in calls}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400, help="1-token tasks per instance")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--before",
        type=Path,
        default=None,
        help="a checkout of the code before a change: adds a `valkey x1 (before)` row,"
        " its orchestratord run on that checkout's sources (same run, same server)",
    )
    ap.add_argument("--no-x2", action="store_true", help="skip the 2-instance row")
    ap.add_argument("--replicas", type=int, default=1, help="fake engines (replicas) in the pool")
    ap.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="R > 0: the rows interleaved, R rounds (median, spread, paired differences)",
    )
    args = ap.parse_args(argv)
    if args.repeats > 0:
        return interleaved(args)
    from llama_orch.state_valkey import EmbeddedServer

    load0 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    info = {"cores": os.cpu_count(), "loadavg_at_start": load0, "c": C}
    log(f"cores {info['cores']}, load average {load0}")
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ha-relay-") as tmp_s:
        tmp = Path(tmp_s)
        procs = Procs(tmp)
        server = EmbeddedServer(tmp / "valkey")
        try:
            furls, fpid = _start_fakes(procs, args.replicas)
            # without a `state:` section: what the store's CPU is added to (#13's goals)
            nurl, n_p = start_orch(procs, "orch-none", furls, tmp)
            log("no store, 1 instance")
            rows["none x1"] = measure([nurl], {"orch": n_p.pid, "engine": fpid}, args.requests)
            procs.stop(n_p)
            overlay = ""
            if args.before is not None:
                src = args.before.resolve() / "packages"
                overlay = os.pathsep.join(
                    str(src / pkg / "src") for pkg in ("core", "orchestratord", "state-valkey")
                )
                m_url, m = start_orch(
                    procs, "orch-memory-before", furls, tmp, state={"backend": "memory"},
                    pythonpath=overlay,
                )  # fmt: skip
                log(f"memory, 1 instance, before ({args.before})")
                watch_m = {"orch": m.pid, "engine": fpid}
                rows["memory x1 (before)"] = measure([m_url], watch_m, args.requests)
                procs.stop(m)
            ourl, op = start_orch(procs, "orch-memory", furls, tmp, state={"backend": "memory"})
            log("memory, 1 instance")
            rows["memory x1"] = measure([ourl], {"orch": op.pid, "engine": fpid}, args.requests)
            procs.stop(op)
            url = server.start()
            assert server.proc is not None
            vpid = server.proc.pid
            if args.before is not None:
                # the same server and engine; a key prefix of its own; its own library
                # version is loaded when it starts and replaced when the next one starts
                state0 = {"backend": "valkey", "url": url, "key_prefix": "before"}
                o_url, o = start_orch(
                    procs, "orch-before", furls, tmp, state=state0, pythonpath=overlay
                )
                log(f"valkey, 1 instance, before ({args.before})")
                watch0 = {"orch": o.pid, "valkey": vpid, "engine": fpid}
                rows["valkey x1 (before)"] = measure([o_url], watch0, args.requests)
                rows["valkey x1 (before)"]["store_calls"] = store_calls(o_url)
                procs.stop(o)
            state = {"backend": "valkey", "url": url}
            a_url, a = start_orch(procs, "orch-valkey-a", furls, tmp, state=state)
            log("valkey, 1 instance")
            watch = {"orch_a": a.pid, "valkey": vpid, "engine": fpid}
            rows["valkey x1"] = measure([a_url], watch, args.requests)
            rows["valkey x1"]["store_calls"] = store_calls(a_url)
            if not args.no_x2:
                b_url, b = start_orch(procs, "orch-valkey-b", furls, tmp, state=state)
                log("valkey, 2 instances")
                watch2 = {**watch, "orch_b": b.pid}
                calls0 = store_calls(a_url)
                rows["valkey x2"] = measure([a_url, b_url], watch2, args.requests)
                calls = [store_calls(a_url), store_calls(b_url)]
                rows["valkey x2"]["store_calls"] = {
                    op: calls[0].get(op, 0) - calls0.get(op, 0) + calls[1].get(op, 0)
                    for op in {*calls[0], *calls[1]}
                }
        finally:
            procs.stop_all()
            server.stop()
    info["loadavg_at_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    lines = [
        f"# orchestratord on a state store: memory vs valkey ({dt.date.today()})",
        "",
        f"`uv run python bench/ha_relay.py --requests {args.requests}"
        f"{'' if args.before is None else ' --before ' + str(args.before)}"
        f"{' --no-x2' if args.no_x2 else ''}"
        f"{f' --replicas {args.replicas}' if args.replicas > 1 else ''}`: cores {info['cores']},"
        f" load average {load0} at the start and {info['loadavg_at_end']} at the end;"
        f" c={C} per instance; fake engine at 0 ms/token.",
        "",
        "| backend x instances | admissions+dispatches/s (1-token tasks) | orchestratord CPU"
        " ms/request | orchestratord CPU µs/relayed token | relayed tokens/s (128-token tasks)"
        " | valkey CPU ms/request | errors / short streams | store calls (move) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        t1, t128 = r["t1"], r["t128"]
        tok = r["orch_cpu_us_per_token"]
        lines.append(
            f"| {name} | {t1['req_per_s']:.0f} | {t1['orch_cpu_ms_per_req']:.2f} |"
            f" {'?' if tok is None else f'{tok:.1f}'} | {t128['tok_per_s']:.0f} |"
            f" {t1['store_cpu_ms_per_req']:.2f} |"
            f" {t1['errors'] + t128['errors']} / {t1['short'] + t128['short']} |"
            f" {_calls(r.get('store_calls'))} |"
        )
    base = rows["none x1"]
    lines += ["", "CPU the store adds to orchestratord (the row minus `none x1`, same run):", ""]
    for name, r in rows.items():
        if name == "none x1":
            continue
        dreq = r["t1"]["orch_cpu_ms_per_req"] - base["t1"]["orch_cpu_ms_per_req"]
        tok, tok0 = r["orch_cpu_us_per_token"], base["orch_cpu_us_per_token"]
        dtok = "?" if tok is None or tok0 is None else f"{tok - tok0:+.1f}"
        lines.append(f"- {name}: {dreq:+.2f} ms per request, {dtok} µs per relayed token")
    lines += [
        "",
        "With 2 instances the CPU per request is the sum of both instances' CPU over all"
        " requests; per instance, admissions+dispatches/s is the total divided by 2.",
        "",
        "```json",
        json.dumps({"machine": info, "rows": rows}, indent=1),
        "```",
    ]
    emit(lines, args.out)
    return 0


def _overlay(before: Path) -> str:
    src = before.resolve() / "packages"
    return os.pathsep.join(str(src / p / "src") for p in ("core", "orchestratord", "state-valkey"))


def interleaved(args: argparse.Namespace) -> int:
    """``--repeats R``: every row's orchestratord up for the whole run, measured in
    rotating order R times (ORCH-2620)."""
    from llama_orch.state_valkey import EmbeddedServer

    load0 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    info: dict[str, Any] = {"cores": os.cpu_count(), "loadavg_at_start": load0, "c": C}
    log(f"cores {info['cores']}, load average {load0}")
    rounds: dict[str, list[dict[str, float]]] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    x2: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ha-relay-") as tmp_s:
        tmp = Path(tmp_s)
        procs = Procs(tmp)
        servers = [EmbeddedServer(tmp / "valkey")]
        if args.before is not None:  # its library version on a server of its own
            servers.append(EmbeddedServer(tmp / "valkey-before"))
        try:
            furls, fpid = _start_fakes(procs, args.replicas)
            vurls = [srv.start() for srv in servers]
            vpids = [srv.proc.pid for srv in servers if srv.proc is not None]
            rows: dict[str, tuple[str, dict[str, int]]] = {}

            def up(name: str, state: dict[str, Any] | None, pp: str | None, v: int | None) -> str:
                url, p = start_orch(
                    procs, "orch-" + name.replace(" ", "-").strip("()"), furls, tmp,
                    state=state, pythonpath=pp,
                )  # fmt: skip
                watch = {"orch": p.pid, "engine": fpid}
                if v is not None:
                    watch["valkey"] = vpids[v]
                rows[name] = (url, watch)
                return url

            up("none x1", None, None, None)
            up("memory x1", {"backend": "memory"}, None, None)
            a_url = up("valkey x1", {"backend": "valkey", "url": vurls[0]}, None, 0)
            if args.before is not None:
                pp = _overlay(args.before)
                up("memory x1 (before)", {"backend": "memory"}, pp, None)
                b_state = {"backend": "valkey", "url": vurls[1]}
                up("valkey x1 (before)", b_state, pp, 1)
            names = list(rows)
            for r in range(args.repeats):
                for name in order(names, r):
                    url, watch = rows[name]
                    m = measure([url], watch, args.requests)
                    fig = round_figures(m["t1"], m["t128"])
                    fig["req_per_s"] = m["t1"]["req_per_s"]
                    fig["tok_per_s"] = m["t128"]["tok_per_s"]
                    rounds.setdefault(name, []).append(fig)
                    raw.setdefault(name, []).append(m)
                load = Path("/proc/loadavg").read_text()[:14]
                log(f"round {r + 1}/{args.repeats} done; load {load}")
            if not args.no_x2:  # relayed tokens/s with 2 processes on one server
                b_url, b = start_orch(
                    procs, "orch-valkey-b", furls, tmp, state={"backend": "valkey", "url": vurls[0]}
                )
                watch2 = {**rows["valkey x1"][1], "orch_b": b.pid}
                x2 = measure([a_url, b_url], watch2, args.requests)
        finally:
            procs.stop_all()
            for srv in servers:
                srv.stop()
    info["loadavg_at_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    pairs = [(n, "none x1") for n in rounds if n != "none x1"]
    pairs += [(n, f"{n} (before)") for n in ("memory x1", "valkey x1")]
    lines = [
        f"# orchestratord on a state store, rows interleaved ({dt.date.today()})",
        "",
        f"`uv run python bench/ha_relay.py --repeats {args.repeats} --requests {args.requests}"
        f"{'' if args.before is None else ' --before ' + str(args.before)}`: cores"
        f" {info['cores']}, load average {load0} at the start and {info['loadavg_at_end']} at"
        f" the end; c={C}; fake engine at 0 ms/token; each round: {args.requests} 1-token and"
        f" {max(50, args.requests // 2)} 128-token tasks per row, rows in rotating order.",
        "",
        *table(rounds, pairs),
    ]
    if x2:
        one = sorted(r["tok_per_s"] for r in rounds["valkey x1"])
        lines += [
            "",
            f"valkey x2 (2 processes, one server, after the rounds): relayed tokens/s"
            f" {x2['t128']['tok_per_s']:.0f} (valkey x1 median {one[len(one) // 2]:.0f});"
            f" 1-token tasks/s {x2['t1']['req_per_s']:.0f} in all"
            f" ({x2['t1']['req_per_s'] / 2:.0f} per instance).",
        ]
    doc = {"machine": info, "rounds": rounds, "x2": x2, "raw": raw}
    lines += ["", "```json", json.dumps(doc, indent=1), "```"]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
