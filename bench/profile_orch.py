"""Profile one orchestratord under load from ``bench/loadgen.py`` (issue #5).

    uv run bench/profile_orch.py --delay-ms 5 -c 64 --seconds 10

Starts a fake engine, one orchestratord and the load generator (each in its
own process group, all stopped in a ``finally``), records the orchestratord
process with py-spy (installed into the bench tools venv under the user
cache) and prints the top frames by self and inclusive share.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from procs import PY, TOOLS, Procs, ensure_venv, log, start_fake, start_orch

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=float, default=5.0)
    ap.add_argument("-c", "--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument(
        "--mode",
        default="orch",
        choices=["orch", "stream", "openai"],
        help="loadgen mode (openai: the facade's streaming /v1/chat/completions, issue #15)",
    )
    ap.add_argument(
        "--state", default=None, choices=["memory", "valkey"], help="a `state:` backend (#13)"
    )
    ap.add_argument("--raw-out", default=None, help="keep py-spy's raw stacks in this file")
    args = ap.parse_args()
    tools = ensure_venv("tools-venv", TOOLS, "import matplotlib")
    tmp = Path(tempfile.mkdtemp(prefix="llorch-prof-"))
    procs = Procs(tmp)
    server = None
    try:
        engine, _ = start_fake(procs, "fake", args.delay_ms)
        state: dict[str, str] | None = None
        if args.state == "valkey":  # one embedded valkey-server, stopped by PID below
            from llama_orch.state_valkey import EmbeddedServer

            server = EmbeddedServer(tmp / "valkey")
            state = {"backend": "valkey", "url": server.start()}
        elif args.state == "memory":
            state = {"backend": "memory"}
        url, orch = start_orch(procs, "orch", engine, tmp, state=state)
        load = procs.start(
            "loadgen",
            [
                PY,
                str(HERE / "loadgen.py"),
                "--mode",
                args.mode,
                "--url",
                url,
                "--concurrency",
                str(args.concurrency),
                "--requests",
                "1000000",
                "--max-tokens",
                str(args.max_tokens),
                "--cap-s",
                str(args.seconds + 8),
                *(["--chat"] if args.mode == "openai" else []),
            ],
        )
        raw = tmp / "profile.txt"
        timer = threading.Timer(3.0, lambda: None)
        timer.start()
        timer.join()
        subprocess.run(
            [
                str(tools / "bin" / "py-spy"),
                "record",
                "-p",
                str(orch.pid),
                "-d",
                str(args.seconds),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(raw),
            ],
            check=True,
            capture_output=True,
        )
        procs.stop(load)
        report(raw, args.top)
        if args.raw_out:
            Path(args.raw_out).write_text(raw.read_text())
    finally:
        procs.stop_all()
        if server is not None:
            server.stop()
    return 0


def _function(frame: str) -> str:
    """``name (file:line)`` without its line: a function's samples counted once."""
    return re.sub(r":\d+\)$", ")", frame)


def report(raw: Path, top: int) -> None:
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        frames = [_function(f) for f in stack.split(";")]
        total += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    log(f"{total} samples")
    print("## self")
    for f, n in self_c.most_common(top):
        print(f"{100 * n / total:5.1f} %  {f}")
    print("## inclusive (by function)")
    for f, n in incl.most_common(top * 2):
        print(f"{100 * n / total:5.1f} %  {f}")


if __name__ == "__main__":
    sys.exit(main())
