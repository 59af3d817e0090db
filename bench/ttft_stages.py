"""Where one request's first-token latency goes, stage by stage, at c=1 (issue #20).

    uv run --frozen python bench/ttft_stages.py --delay-ms 5 -n 200

Starts the fake engine and one orchestratord under ``stage_probe.py`` (monotonic
timestamps at each stage), then sends ``-n`` requests one after the other from a
plain blocking socket (no client library in the way) on each path: *direct*
(``/completion`` on the fake engine), *stream* (``POST /v1/tasks`` with
``Accept: text/event-stream``) and *openai* (the facade's streaming
``/v1/chat/completions``). Prints, per path, the p50 of each stage's time since
the client sent the request and the p50 of each step between stages, plus the
orchestratord CPU per request of the path (``/proc``). Timing-sensitive: run it
under ``flock /work/bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadgen import _tree, pct, proc_cpu_s
from procs import PY, Procs, log, start_fake, start_orch

HERE = Path(__file__).resolve().parent
PROMPT = "Write one short sentence about queues and streams."
_CONTENT = re.compile(rb'"content":"[^"]')
STAGES = (
    "req_in",
    "asgi",
    "admit",
    "admitted",
    "stream_open",
    "dispatch",
    "run_start",
    "chat_tpl",
    "chat_tpl_done",
    "engine_call",
    "engine_call_done",
    "engine_fetch",
    "engine_fetch_done",
    "eng_acquire",
    "eng_connected",
    "eng_written",
    "eng_bytes",
    "token",
    "writing",
    "written",
    "writing_token",
    "written_token",
)


def _request(path: str, body: dict[str, Any], port: int, accept: str) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: {accept}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


class RawClient:
    """One kept-alive connection; ``one()`` sends a request, returns (sent, first
    token) in ``monotonic_ns`` and reads the chunked answer to its end."""

    def __init__(self, port: int, token: re.Pattern[bytes]) -> None:
        self.port = port
        self.token = token
        self.sock: socket.socket | None = None

    def one(self, request: bytes) -> tuple[int, int]:
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        buf = bytearray()
        first = 0
        sent = time.monotonic_ns()
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            now = time.monotonic_ns()
            if not data:
                sock.close()
                self.sock = None
                break
            buf += data
            if not first and self.token.search(buf):
                first = now
            if buf.endswith(b"\r\n0\r\n\r\n"):
                break
        if not first:
            raise RuntimeError(f"no token in the answer: {bytes(buf[:300])!r}")
        if b"connection: close" in buf[:2000].lower() and self.sock is not None:
            self.sock.close()
            self.sock = None
        return sent, first


def run_path(
    name: str, client: RawClient, request: bytes, n: int, warmup: int, orch_pid: int | None
) -> tuple[list[tuple[int, int]], float]:
    for _ in range(warmup):
        client.one(request)
    pids = _tree(orch_pid) if orch_pid else []
    cpu0 = proc_cpu_s(pids)
    out = [client.one(request) for _ in range(n)]
    cpu = (proc_cpu_s(pids) - cpu0) / n * 1000 if pids else 0.0
    ttft = [(f - s) / 1e6 for s, f in out]
    log(f"{name}: TTFT p50 {pct(ttft, 50):.3f} ms, orchestratord CPU {cpu:.2f} ms/request")
    return out, cpu


def stages(sends: list[tuple[int, int]], events: list[tuple[str, int]]) -> dict[str, list[float]]:
    """Per stage, its time after the request was sent (ms), one value per request."""
    events = sorted(events, key=lambda e: e[1])
    per: dict[str, list[float]] = {s: [] for s in (*STAGES, "client_token")}
    j = 0
    for k, (sent, first) in enumerate(sends):
        end = sends[k + 1][0] if k + 1 < len(sends) else 1 << 62
        while j < len(events) and events[j][1] < sent:
            j += 1
        seen: dict[str, int] = {}
        i = j
        while i < len(events) and events[i][1] < end:
            stage, t = events[i]
            if stage in ("written", "writing") and "token" in seen:
                stage += "_token"  # the first write after the first token
            if stage not in seen:
                seen[stage] = t
            i += 1
        for stage, t in seen.items():
            per[stage].append((t - sent) / 1e6)
        per["client_token"].append((first - sent) / 1e6)
    return per


def table(name: str, per: dict[str, list[float]], direct_ttft: float, cpu: float) -> str:
    rows = [(s, pct(v, 50)) for s, v in per.items() if v]
    rows.sort(key=lambda r: r[1] or 0.0)
    lines = [
        f"### {name} (n={len(per['client_token'])}, orchestratord CPU {cpu:.2f} ms/request;"
        f" direct TTFT p50 {direct_ttft:.3f} ms)",
        "",
        "| stage | p50 since sent (ms) | step from the stage before (ms) |",
        "|---|---|---|",
    ]
    prev = 0.0
    for stage, p50 in rows:
        assert p50 is not None
        lines.append(f"| {stage} | {p50:.3f} | {p50 - prev:.3f} |")
        prev = p50
    return "\n".join(lines)


def idle_cpu(pid: int, port: int, seconds: float, delay_ms: float) -> str:
    """orchestratord's CPU with no request, then during one 400-token stream."""
    time.sleep(2.0)
    pids = _tree(pid)
    c0, t0 = proc_cpu_s(pids), time.monotonic()
    time.sleep(seconds)
    idle = (proc_cpu_s(pids) - c0) / (time.monotonic() - t0) * 1000
    body = {"prompt": PROMPT, "max_tokens": 400}
    client = RawClient(port, re.compile(rb"event: token"))
    c0, t0 = proc_cpu_s(pids), time.monotonic()
    client.one(_request("/v1/tasks", body, port, "text/event-stream"))
    cpu, wall = proc_cpu_s(pids) - c0, time.monotonic() - t0
    text = (
        f"orchestratord CPU: idle {idle:.2f} ms/s over {seconds:g} s; one 400-token stream at"
        f" {delay_ms:g} ms/token: {cpu * 1000:.0f} ms in {wall:.2f} s"
        f" ({cpu / 400 * 1e6:.0f} us/token, {cpu / wall * 1000:.0f} ms/s)"
    )
    log(text)
    return text + "; " + bare_wake(delay_ms)


def bare_wake(delay_ms: float, n: int = 400) -> str:
    """CPU of one wake from ``asyncio.sleep`` in a loop with nothing else to do: what
    the machine charges a process per wake-up, whatever the process does."""
    import asyncio

    async def sleeps() -> float:
        c0 = time.process_time()
        for _ in range(n):
            await asyncio.sleep(delay_ms / 1000)
        return (time.process_time() - c0) / n

    per = asyncio.run(sleeps())
    return f"a bare asyncio.sleep({delay_ms / 1000:g}) loop here: {per * 1e6:.0f} us CPU per wake"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=float, default=5.0)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--paths", default="stream,openai")
    ap.add_argument("--out", default=None, help="also write the tables to this file")
    ap.add_argument(
        "--compare-ref",
        default=None,
        metavar="GIT_REF",
        help="first measure an orchestratord with the packages of GIT_REF, on the same engine",
    )
    ap.add_argument(
        "--idle-s",
        type=float,
        default=0.0,
        help="first measure orchestratord's CPU with no request for this long, then"
        " during one stream of 400 tokens",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llorch-stages-"))
    procs = Procs(tmp)
    load = Path("/proc/loadavg").read_text().split()[:3]
    try:
        engine, _ = start_fake(procs, "fake", args.delay_ms)
        eport = int(engine.rsplit(":", 1)[1])
        sides = [("this tree", None)]
        if args.compare_ref:
            from run import export_ref

            sides.insert(0, (args.compare_ref, export_ref(args.compare_ref)))
        out_parts: list[str] = []
        for side, pythonpath in sides:
            out_parts += measure(args, procs, tmp, engine, eport, side, pythonpath)
    finally:
        procs.stop_all()
    load_end = Path("/proc/loadavg").read_text().split()[:3]
    head = [
        f"## ttft_stages: {args.delay_ms:g} ms/token, c=1, {args.max_tokens}-token answers"
        f" (load {' '.join(load)} -> {' '.join(load_end)})",
        "",
    ]
    text = "\n".join(head + out_parts)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


_DIRECT: list[float] = []


def measure(
    args: argparse.Namespace,
    procs: Procs,
    tmp: Path,
    engine: str,
    eport: int,
    side: str,
    pythonpath: str | None,
) -> list[str]:
    """One orchestratord (``pythonpath``: other sources) under the probe: its tables."""
    events_file = tmp / f"events-{len(_DIRECT)}-{side.replace(' ', '_')}.json"
    name = f"orch-{side.replace(' ', '_')}"
    url, orch = start_orch(
        procs,
        name,
        engine,
        tmp,
        prefix=[PY, str(HERE / "stage_probe.py"), str(events_file)],
        pythonpath=pythonpath,
    )
    try:
        port = int(url.rsplit(":", 1)[1])
        idle = idle_cpu(orch.pid, port, args.idle_s, args.delay_ms) if args.idle_s else ""
        direct_body = {"prompt": PROMPT, "n_predict": args.max_tokens, "stream": True}
        direct, _ = run_path(
            "direct",
            RawClient(eport, _CONTENT),
            _request("/completion", direct_body, eport, "*/*"),
            args.n,
            args.warmup,
            None,
        )
        _DIRECT.append(pct([(f - s) / 1e6 for s, f in direct], 50) or 0.0)
        direct_ttft = _DIRECT[-1]
        results: dict[str, tuple[list[tuple[int, int]], float]] = {}
        for path in args.paths.split(","):
            if path == "stream":
                body = {"prompt": PROMPT, "max_tokens": args.max_tokens}
                req = _request("/v1/tasks", body, port, "text/event-stream")
                client = RawClient(port, re.compile(rb"event: token"))
            else:
                body = {
                    "model": "fake-model",
                    "max_tokens": args.max_tokens,
                    "stream": True,
                    "messages": [{"role": "user", "content": PROMPT}],
                }
                req = _request("/v1/chat/completions", body, port, "text/event-stream")
                client = RawClient(port, _CONTENT)
            results[path] = run_path(path, client, req, args.n, args.warmup, orch.pid)
    finally:
        procs.stop(orch)
    events = [(s, t) for s, t in json.loads(events_file.read_text())]
    out = [f"## {side}", ""] + ([idle, ""] if idle else [])
    for path, (sends, cpu) in results.items():
        out += [table(f"{side}: {path}", stages(sends, events), direct_ttft, cpu), ""]
    return out


if __name__ == "__main__":
    sys.exit(main())
