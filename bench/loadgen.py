"""Closed-loop streaming load generator (its own process, so the system under test
is measured alone). Prints one JSON object with the results on stdout.

Modes (what one "request" is):

* ``llama``   — ``POST /completion`` (llama.cpp SSE) straight to an engine;
* ``openai``  — ``POST /v1/completions`` stream (``--chat``: ``/v1/chat/completions``);
* ``orch``    — ``POST /v1/tasks`` then ``GET /v1/tasks/{id}/stream`` on orchestratord;
* ``stream``  — ``POST /v1/tasks`` with ``Accept: text/event-stream``: one request per
  task (ORCH-2710);
* ``admit``   — ``POST /v1/tasks`` only (admissions per second);
* ``hold``    — orchestratord: open ``--requests`` streams, wait until every one
  has its first token, sample RSS of the watched processes, cancel them all.

``--steps K`` (``admit``, ``hold``): the requests in K batches with the watched
processes' RSS sampled after each has settled, so that memory per task is a slope
between batches rather than one peak against a cold start (issue #20).

TTFT = request sent → first token event; total = → end of the stream
(``"stop":true`` / ``[DONE]`` / the ``end`` frame). ``--watch NAME=PID`` samples
``/proc/PID`` CPU time over the measured phase (warm-up excluded) and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

try:
    import msgspec

    _loads = msgspec.json.decode
except ImportError:  # pragma: no cover
    _loads = json.loads

_CLK = os.sysconf("SC_CLK_TCK")
PROMPT = "Write one short sentence about queues and streams."


def _tree(pid: int) -> list[int]:
    """pid and its descendants (a proxy may run its workers as children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def proc_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _CLK  # utime + stime
    return total


def proc_rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Result:
    __slots__ = ("error", "tokens", "total", "ttft")

    def __init__(self) -> None:
        self.ttft: float | None = None
        self.total: float | None = None
        self.tokens = 0
        self.error: str | None = None


def _events(buf: bytearray, chunk: bytes) -> list[bytes]:
    """Complete SSE events (split on a blank line) from the buffer (LF framing)."""
    buf += chunk
    if b"\n\n" not in buf:
        return []
    parts = bytes(buf).split(b"\n\n")
    del buf[:]
    buf += parts.pop()
    return parts


class Client:
    def __init__(self, args: argparse.Namespace, http: aiohttp.ClientSession) -> None:
        self.a = args
        self.http = http
        self.url = args.url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if args.api_key:
            self.headers["Authorization"] = f"Bearer {args.api_key}"

    async def one(self, n: int) -> Result:
        r = Result()
        t0 = time.perf_counter()
        try:
            await getattr(self, "_" + self.a.mode)(r, t0, n)
        except Exception as exc:  # a failed request is a data point, not a crash
            r.error = f"{type(exc).__name__}: {exc}"[:300]
        return r

    async def _llama(self, r: Result, t0: float, n: int) -> None:
        # The same sampling fields the llamacpp-http adapter sends for a default
        # task (greedy, no top-k/p/min-p, no repeat penalty): a real engine's
        # cost depends on them, so direct and llama-orch must ask for the same work.
        body = {
            "prompt": PROMPT,
            "n_predict": self.a.max_tokens,
            "stream": True,
            "cache_prompt": True,
            "seed": n,
            "temperature": 0.0,
            "top_k": 0,
            "top_p": 1.0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "stop": [],
        }
        async with self.http.post(
            self.url + "/completion", data=json.dumps(body), headers=self.headers
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            buf = bytearray()
            async for chunk in resp.content.iter_any():
                for ev in _events(buf, chunk):
                    if b'"stop":true' in ev:
                        r.total = time.perf_counter() - t0
                        return
                    if b'"error"' in ev[:20]:
                        raise RuntimeError(ev[:200].decode(errors="replace"))
                    if b'"content":""' not in ev:
                        if r.ttft is None:
                            r.ttft = time.perf_counter() - t0
                        r.tokens += 1
        raise RuntimeError("stream ended without the final chunk")

    async def _openai(self, r: Result, t0: float, n: int) -> None:
        chat = self.a.chat
        body: dict[str, object] = {
            "model": self.a.model,
            "max_tokens": self.a.max_tokens,
            "stream": True,
        }
        if chat:
            body["messages"] = [{"role": "user", "content": PROMPT}]
        else:
            body["prompt"] = PROMPT
        path = "/v1/chat/completions" if chat else "/v1/completions"
        async with self.http.post(
            self.url + path, data=json.dumps(body), headers=self.headers
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            buf = bytearray()
            async for chunk in resp.content.iter_any():
                for ev in _events(buf, chunk):
                    for line in ev.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            r.total = time.perf_counter() - t0
                            return
                        obj = _loads(payload)
                        if "error" in obj:
                            raise RuntimeError(str(obj["error"])[:200])
                        choices = obj.get("choices") or []
                        if not choices:
                            continue
                        c0 = choices[0]
                        text = (c0.get("delta") or {}).get("content") if chat else c0.get("text")
                        if text:
                            if r.ttft is None:
                                r.ttft = time.perf_counter() - t0
                            r.tokens += 1
        raise RuntimeError("stream ended without [DONE]")

    async def _submit(self) -> str:
        body = {"prompt": PROMPT, "max_tokens": self.a.max_tokens}
        if self.a.pool_id:
            body["pool_id"] = self.a.pool_id
        async with self.http.post(
            self.url + "/v1/tasks", data=json.dumps(body), headers=self.headers
        ) as resp:
            payload = await resp.read()
            if resp.status != 202:
                raise RuntimeError(f"HTTP {resp.status}: {payload[:200]!r}")
        return _loads(payload)["task_id"]

    async def _orch(self, r: Result, t0: float, n: int) -> None:
        tid = await self._submit()
        async with self.http.get(f"{self.url}/v1/tasks/{tid}/stream") as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            await self._read_orch_events(r, t0, resp)

    @staticmethod
    async def _read_orch_events(r: Result, t0: float, resp: aiohttp.ClientResponse) -> None:
        buf = bytearray()
        async for chunk in resp.content.iter_any():
            for ev in _events(buf, chunk):
                if b"event: token" in ev:
                    if r.ttft is None:
                        r.ttft = time.perf_counter() - t0
                    r.tokens += 1
                elif b"event: end" in ev:
                    r.total = time.perf_counter() - t0
                    return
                elif b"event: error" in ev:
                    raise RuntimeError(ev[:300].decode(errors="replace"))
        raise RuntimeError("stream ended without an end event")

    async def _stream(self, r: Result, t0: float, n: int) -> None:
        body = {"prompt": PROMPT, "max_tokens": self.a.max_tokens}
        if self.a.pool_id:
            body["pool_id"] = self.a.pool_id
        headers = {**self.headers, "Accept": "text/event-stream"}
        async with self.http.post(
            self.url + "/v1/tasks", data=json.dumps(body), headers=headers
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            await self._read_orch_events(r, t0, resp)

    async def _admit(self, r: Result, t0: float, n: int) -> None:
        await self._submit()
        r.total = r.ttft = time.perf_counter() - t0


async def run_closed_loop(
    cl: Client, total: int, conc: int, cap_s: float
) -> tuple[list[Result], float]:
    results: list[Result] = []
    counter = iter(range(total))
    deadline = time.perf_counter() + cap_s

    async def worker() -> None:
        for n in counter:
            if time.perf_counter() > deadline:
                return
            results.append(await cl.one(n))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return results, time.perf_counter() - t0


async def _settled_rss(watch: dict[str, list[int]]) -> dict[str, int]:
    """RSS of the watched processes once the last batch's work has settled."""
    await asyncio.sleep(0.5)
    return {k: proc_rss_kb(p) for k, p in watch.items()}


async def hold(
    cl: Client, n: int, watch: dict[str, list[int]], steps: int, snapshot_dir: str | None = None
) -> dict[str, object]:
    """Open n streams in ``steps`` batches; after each batch has its first tokens sample
    RSS (``rss_steps_kb``, with ``streams_steps`` open); cancel everything at the end.
    ``snapshot_dir`` (``bench/memory_profile.py``): after batch k, ask the traced
    orchestratord for snapshot k (file ``dump-k``) and wait for it (``dump-k.pkl``)."""
    before = {k: proc_rss_kb(p) for k, p in watch.items()}
    ids: list[str] = []
    opened: list[aiohttp.ClientResponse] = []
    readers: list[asyncio.Task[None]] = []
    rss_steps: list[dict[str, int]] = []
    open_steps: list[int] = []

    async def reader(first: asyncio.Event, tid: str) -> None:
        resp = await cl.http.get(f"{cl.url}/v1/tasks/{tid}/stream")
        opened.append(resp)
        async for chunk in resp.content.iter_any():
            if b"event: token" in chunk:
                first.set()
            if b"event: end" in chunk or b"event: error" in chunk:
                break
        first.set()

    try:
        for k in range(steps):
            size = n // steps + (1 if k < n % steps else 0)
            batch = await asyncio.gather(*(cl._submit() for _ in range(size)))
            ids += batch
            first = [asyncio.Event() for _ in batch]
            pairs = zip(first, batch, strict=True)
            readers += [asyncio.create_task(reader(e, t)) for e, t in pairs]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first)), 60)
            rss_steps.append(await _settled_rss(watch))
            open_steps.append(len(ids))
            if snapshot_dir is not None:
                (Path(snapshot_dir) / f"dump-{k}").touch()
                while not (Path(snapshot_dir) / f"dump-{k}.pkl").exists():
                    await asyncio.sleep(0.1)
    finally:
        await asyncio.gather(
            *(cl.http.post(f"{cl.url}/v1/tasks/{t}/cancel") for t in ids), return_exceptions=True
        )
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for resp in opened:
            resp.close()
    return {
        "streams": n,
        "rss_before_kb": before,
        "rss_during_kb": rss_steps[-1],
        "rss_steps_kb": rss_steps,
        "streams_steps": open_steps,
    }


async def amain(args: argparse.Namespace) -> dict[str, object]:
    watch = {k: _tree(int(v)) for k, v in (w.split("=", 1) for w in args.watch)}
    conn = (
        aiohttp.TCPConnector(limit=0, force_close=True)
        if args.no_keepalive
        else aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        cl = Client(args, http)
        if args.mode == "hold":
            return await hold(cl, args.requests, watch, args.steps, args.snapshot_dir)
        if args.warmup:
            await run_closed_loop(cl, args.warmup, min(args.concurrency, args.warmup), args.cap_s)
        peak = {k: proc_rss_kb(p) for k, p in watch.items()}
        rss0 = dict(peak)
        cpu0 = {k: proc_cpu_s(p) for k, p in watch.items()}
        self0 = time.process_time()
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                for k, p in watch.items():
                    peak[k] = max(peak[k], proc_rss_kb(p))
                try:
                    await asyncio.wait_for(stop.wait(), 0.25)
                except TimeoutError:
                    pass

        sampler = asyncio.create_task(sample())
        if args.steps > 1:  # admit in batches, RSS once each batch has settled
            results, wall = [], 0.0
            rss_steps, ok_steps = [], []
            for _ in range(args.steps):
                size = args.requests // args.steps
                part, w = await run_closed_loop(cl, size, args.concurrency, args.cap_s)
                results += part
                wall += w
                rss_steps.append(await _settled_rss(watch))
                ok_steps.append(sum(1 for r in results if r.error is None))
        else:
            results, wall = await run_closed_loop(cl, args.requests, args.concurrency, args.cap_s)
        cpu1 = {k: proc_cpu_s(p) for k, p in watch.items()}
        self1 = time.process_time()
        stop.set()
        await sampler
    ok = [r for r in results if r.error is None and r.total is not None]
    errors = [r.error for r in results if r.error is not None]
    short = [r for r in ok if args.mode not in ("admit",) and r.tokens != args.max_tokens]
    ttft = [r.ttft * 1000 for r in ok if r.ttft is not None]
    total = [r.total * 1000 for r in ok if r.total is not None]
    tokens = sum(r.tokens for r in ok)
    return {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "requested": args.requests,
        "done": len(results),
        "ok": len(ok),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "short_streams": len(short),
        "wall_s": wall,
        "req_per_s": len(ok) / wall if wall else 0.0,
        "tok_per_s": tokens / wall if wall else 0.0,
        "tokens": tokens,
        "ttft_ms": {p: pct(ttft, p) for p in (50, 95, 99)},
        "total_ms": {p: pct(total, p) for p in (50, 95, 99)},
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in watch},
        "client_cpu_s": self1 - self0,
        "rss_start_kb": rss0,
        "rss_peak_kb": peak,
        **({"rss_steps_kb": rss_steps, "ok_steps": ok_steps} if args.steps > 1 else {}),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mode", required=True, choices=["llama", "openai", "orch", "stream", "admit", "hold"]
    )
    ap.add_argument("--url", required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=None, help="default max(10, concurrency)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--cap-s", type=float, default=60.0, help="time cap of the measured phase")
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--model", default="fake-model")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--pool-id", default=None)
    ap.add_argument(
        "--no-keepalive",
        action="store_true",
        help="a new connection per request (llama-server drops idle keep-alives)",
    )
    ap.add_argument("--watch", action="append", default=[], metavar="NAME=PID")
    ap.add_argument(
        "--steps",
        type=int,
        default=1,
        help="admit/hold: in this many batches, RSS sampled after each (memory slopes)",
    )
    ap.add_argument(
        "--snapshot-dir",
        default=None,
        help="hold: ask a traced orchestratord for a snapshot after each batch (memory_profile)",
    )
    args = ap.parse_args(argv)
    if args.warmup is None:
        args.warmup = max(10, args.concurrency)
    out = asyncio.run(amain(args))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
