"""Where orchestratord's bytes go per queued task and per open stream (issue #20).

    uv run --frozen python bench/memory_profile.py --mode admit -n 2000
    uv run --frozen python bench/memory_profile.py --mode hold -n 200

Starts a fake engine and one orchestratord the way ``bench/run.py``'s memory stage
does (``start_fake``/``start_orch``), but orchestratord runs under ``tracemalloc``
(a thin wrapper, ``_traced_main`` below, started with ``python -c``). A side thread
of that process writes a snapshot and the ``gc`` type counts when asked through a
file. The script takes one snapshot after a warm-up and N tasks (or N held
streams), one after 2N, and prints the difference per task/stream: the top
allocation sites by file:line and the object types whose count grew. Every process
it starts is stopped by its process group in a ``finally`` (``Procs``).
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from procs import PY, Procs, loadgen, log, start_fake, start_orch

# Runs inside orchestratord's process: tracemalloc from the start, a thread that
# answers "dump-K" request files with a snapshot and gc type counts.
_WRAPPER = r"""
import collections, gc, os, pickle, sys, threading, time, tracemalloc
tracemalloc.start(int(os.environ.get("MEMPROF_FRAMES", "1")))
d = os.environ["MEMPROF_DIR"]
def _serve():
    k = 0
    while True:
        req = os.path.join(d, f"dump-{k}")
        if not os.path.exists(req):
            time.sleep(0.05)
            continue
        gc.collect()
        counts = collections.Counter(repr(type(o)) for o in gc.get_objects())
        snap = tracemalloc.take_snapshot()
        who = tuple(w for w in os.environ.get("MEMPROF_WHO", "").split(",") if w)
        found = collections.Counter()
        if who:
            for o in gc.get_objects():
                for r in gc.get_referents(o):
                    tb = tracemalloc.get_object_traceback(r)
                    site = "" if tb is None else f"{tb[0].filename}:{tb[0].lineno}"
                    if site.endswith(who):
                        found[f"{site.rsplit('/', 1)[-1]} {type(r).__name__}"
                              f" <- {type(o).__name__}"] += 1
        with open(req + ".tmp", "wb") as f:
            pickle.dump((snap, dict(counts), found.most_common(25)), f)
        os.rename(req + ".tmp", req + ".pkl")
        k += 1
threading.Thread(target=_serve, daemon=True).start()
sys.argv = sys.argv[1:]
from llama_orch.orchestratord.main import main
sys.exit(main())
"""


def _dump(d: Path, k: int) -> tuple[tracemalloc.Snapshot, dict[str, int]]:
    (d / f"dump-{k}").touch()
    return _wait(d, k)


def _wait(d: Path, k: int) -> tuple[tracemalloc.Snapshot, dict[str, int]]:
    out = d / f"dump-{k}.pkl"
    for _ in range(1200):
        if out.exists():
            with out.open("rb") as f:
                snap, counts, found = pickle.load(f)
            for what, c in found:
                print(f"{c:7d}  {what}")
            return snap, counts
        time.sleep(0.1)
    raise RuntimeError("no snapshot from orchestratord within 120 s")


def _report(
    a: tuple[tracemalloc.Snapshot, dict[str, int]],
    b: tuple[tracemalloc.Snapshot, dict[str, int]],
    n: int,
    top: int,
    what: str,
) -> None:
    flt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    sa, sb = a[0].filter_traces(flt), b[0].filter_traces(flt)
    total = sum(s.size for s in sb.statistics("filename")) - sum(
        s.size for s in sa.statistics("filename")
    )
    print(f"\n== traced bytes per {what}: {total / n:,.0f} B ({n} {what}s between snapshots)")
    print(f"-- top {top} sites (bytes per {what}, blocks per {what})")
    for st in sb.compare_to(sa, "lineno")[:top]:
        fr = st.traceback[0]
        name = "/".join(Path(fr.filename).parts[-3:])
        print(f"{st.size_diff / n:9.1f} B {st.count_diff / n:6.2f}  {name}:{fr.lineno}")
    print(f"-- by package (bytes per {what})")
    pkgs: collections.Counter[str] = collections.Counter()
    for st in sb.compare_to(sa, "filename"):
        parts = Path(st.traceback[0].filename).parts
        key = (
            next(
                (p for p in parts[::-1][1:] if p not in ("protocol", "asyncio", "middleware")),
                parts[-1],
            )
            if "site-packages" in parts or "llama_orch" in parts
            else parts[-1]
        )
        pkgs[key] += st.size_diff
    for k, v in pkgs.most_common(12):
        print(f"{v / n:9.1f} B  {k}")
    if a[0].traceback_limit > 1:
        print(f"-- tracebacks of the top {top // 3} sites")
        for st in sb.compare_to(sa, "traceback")[: top // 3]:
            print(f"{st.size_diff / n:9.1f} B {st.count_diff / n:6.2f}")
            for line in st.traceback.format(limit=a[0].traceback_limit)[::-1][:8]:
                print("     " + line)
    print(f"-- object types whose count grew (per {what})")
    grew = collections.Counter({t: b[1].get(t, 0) - a[1].get(t, 0) for t in b[1]})
    for t, c in grew.most_common(top):
        if c / n >= 0.05:
            print(f"{c / n:7.2f}  {t}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["admit", "hold"], required=True)
    ap.add_argument("-n", type=int, default=2000, help="tasks (streams) per step")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--frames", type=int, default=1, help="tracemalloc frames per trace")
    ap.add_argument("--who", default="", help="file:line,...: name the objects made there")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llorch-mem-"))
    procs = Procs(tmp)
    dumps = tmp / "dumps"
    dumps.mkdir()
    os.environ["MEMPROF_DIR"] = str(dumps)
    os.environ["MEMPROF_FRAMES"] = str(args.frames)
    os.environ["MEMPROF_WHO"] = args.who
    prefix = [PY, "-c", _WRAPPER]
    try:
        if args.mode == "admit":
            eng, _ = start_fake(procs, "fake-1slot", 1000.0, slots=1)
            url, _op = start_orch(
                procs, "orch", eng, tmp, queue_capacity=3 * args.n + 1000, prefix=prefix
            )
            loadgen("admit", url, 32, 500, cap_s=120, watch={}, warmup=0)
            s1 = _dump(dumps, 0)
            loadgen("admit", url, 32, args.n, cap_s=240, watch={}, warmup=0)
            s2 = _dump(dumps, 1)
            what = "queued task"
        else:
            eng, _ = start_fake(procs, "fake-slow", 1000.0, slots=2 * args.n + 16)
            url, _op = start_orch(procs, "orch", eng, tmp, prefix=prefix)
            loadgen("orch", url, 16, 64, cap_s=60, max_tokens=2, watch={}, warmup=0)
            s1, s2 = _hold(procs, url, dumps, args.n)
            what = "open stream"
        _report(s1, s2, args.n, args.top, what)
    finally:
        procs.stop_all()
    return 0


def _hold(procs: Procs, url: str, dumps: Path, n: int) -> tuple[Any, Any]:
    """n streams held open (one batch), a snapshot; n more, another snapshot."""
    cmd = [PY, str(Path(__file__).parent / "loadgen.py"), "--mode", "hold", "--url", url]
    cmd += ["--concurrency", str(2 * n), "--requests", str(2 * n), "--max-tokens", "4000"]
    cmd += ["--cap-s", "120", "--steps", "2", "--snapshot-dir", str(dumps)]
    p = procs.start("hold", cmd)
    s1 = _wait(dumps, 0)  # loadgen asks after each batch, and waits for the snapshot
    s2 = _wait(dumps, 1)
    log("snapshots taken; stopping the held streams")
    procs.stop(p)
    return s1, s2


if __name__ == "__main__":
    sys.exit(main())
