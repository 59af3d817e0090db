"""A native load generator for the one-request path: Debian's ``wrk`` with a Lua script (ORCH-2754).

On 2 cores the Python load generator (``bench/loadgen.py``) spends about as much
CPU per request as the server it measures, so its requests/s figures say more
about the client than about llama-orch (issue #20). ``wrk`` is C: it drives the
same fake engine directly (``POST /completion``, llama.cpp SSE) and through
``orchestratord`` (``POST /v1/tasks`` with ``Accept: text/event-stream``, one
request per task, ORCH-2710), and each response is checked in Lua for the
stream's last frame (``"stop":true`` direct, ``event: end`` relayed), so a
cut or refused stream is counted as bad, never as a request served.

``wrk`` and the LuaJIT library it links are unpacked from Debian into the user
cache (``tools/debian_tools.py``: ``apt-get download`` + ``dpkg-deb -x``, no
root). Used by ``bench/run.py --native`` and ``bench/scaling.py``; on its own:

    uv run bench/native_load.py --url http://127.0.0.1:8080 --mode stream -c 64 -d 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tools")]

from debian_tools import provision_deb  # noqa: E402  (tools/ is not a package)
from loadgen import _tree, proc_cpu_s  # noqa: E402  (bench/loadgen.py)

PROMPT = "Write one short sentence about queues and streams."
_CLK = os.sysconf("SC_CLK_TCK")

_LUA = """
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "text/event-stream"
local mark = [==[%(mark)s]==]
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, mark, 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bad":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, b, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def wrk_binary() -> tuple[Path, dict[str, str]]:
    """``wrk`` and the environment it runs in (LuaJIT from the user cache)."""
    _, (wrk,) = provision_deb("wrk", ("usr/bin/wrk",))
    _, (lib,) = provision_deb("libluajit-5.1-2", ("usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2",))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(lib.parent), env.get("LD_LIBRARY_PATH", "")) if p
    )
    return wrk, env


def _script(mode: str, max_tokens: int) -> tuple[str, str]:
    """(URL path, Lua script) for ``mode``: ``llama`` direct or ``stream`` relayed."""
    if mode == "llama":  # the fields loadgen.py's llama mode sends (the adapter's defaults)
        body = {
            "prompt": PROMPT,
            "n_predict": max_tokens,
            "stream": True,
            "cache_prompt": True,
            "temperature": 0.0,
            "top_k": 0,
            "top_p": 1.0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
        }
        return "/completion", _LUA % {"body": json.dumps(body), "mark": '"stop":true'}
    if mode == "stream":
        body = {"prompt": PROMPT, "max_tokens": max_tokens}
        return "/v1/tasks", _LUA % {"body": json.dumps(body), "mark": "event: end"}
    raise ValueError(f"unknown mode {mode!r}")


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants (``--workers`` children included)."""
    return proc_cpu_s(_tree(pid))


def run_wrk(
    url: str,
    mode: str,
    c: int,
    seconds: float,
    *,
    max_tokens: int = 32,
    threads: int = 1,
    watch: dict[str, int] | None = None,
    warmup_s: float = 1.0,
) -> dict[str, Any]:
    """One closed-loop wrk run (after ``warmup_s`` unmeasured): requests/s of good
    streams, latency percentiles (request → end of stream), CPU of watched pids."""
    wrk, env = wrk_binary()
    path, lua = _script(mode, max_tokens)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
        script = f.name
    try:

        def once(secs: float) -> dict[str, Any]:
            cmd = [
                str(wrk),
                f"-t{threads}",
                f"-c{c}",
                f"-d{max(1, round(secs))}s",
                "--timeout",
                "10s",
                "-s",
                script,
                url.rstrip("/") + path,
            ]
            out = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=secs + 60, check=False
            )
            for line in out.stdout.splitlines():
                if line.startswith("WRKJSON "):
                    res: dict[str, Any] = json.loads(line[8:])
                    return res
            raise RuntimeError(f"wrk gave no result: {out.stdout[-800:]} {out.stderr[-800:]}")

        if warmup_s > 0:
            once(warmup_s)
        before = {k: cpu_s(v) for k, v in (watch or {}).items()}
        t0 = time.monotonic()
        res = once(seconds)
        wall = time.monotonic() - t0
        res["cpu_s"] = {k: round(cpu_s(v) - before[k], 3) for k, v in (watch or {}).items()}
        res["wall_s"] = round(wall, 2)
        dur = res["duration_us"] / 1e6
        good = res["requests"] - res["bad"]
        res["good"] = good
        res["req_per_s"] = good / dur if dur else 0.0
        res["mode"], res["c"], res["max_tokens"] = mode, c, max_tokens
        return res
    finally:
        os.unlink(script)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--mode", choices=["llama", "stream"], default="stream")
    ap.add_argument("-c", "--concurrency", type=int, default=64)
    ap.add_argument("-d", "--seconds", type=float, default=8.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--watch", type=int, action="append", default=[], help="pid to sample")
    args = ap.parse_args()
    res = run_wrk(
        args.url,
        args.mode,
        args.concurrency,
        args.seconds,
        max_tokens=args.max_tokens,
        watch={"watched": args.watch[0]} if args.watch else None,
    )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
