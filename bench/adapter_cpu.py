"""Adapter CPU per streamed token: vllm-http vs llamacpp-http, side by side.

Both adapters now share ``llama_orch.adapter_http`` and its lazy idle timer
(one timer per stream, ORCH-4103). This bench streams the same load from the
bench's fake engine (``bench/fake_engine.py``, in its own process so its CPU
is not counted) through each adapter in turn, several rounds interleaved, and
prints this process's CPU time per token for each. A third row, ``per-read
timer``, is the vLLM adapter with an ``asyncio.timeout`` around every read:
the read loop vLLM, TGI and Triton had before the shared base.

Run: ``uv run --frozen python bench/adapter_cpu.py [--streams 64 --tokens 200 --rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from llama_orch.adapter_http._streams import InFlight
from llama_orch.adapter_http.base import HttpAdapter
from llama_orch.adapters.llamacpp_http import LlamaCppHttpAdapter
from llama_orch.adapters.vllm_http import VllmHttpAdapter
from llama_orch.core.adapter_api import AdapterTarget, Finished, GenerateRequest, TokenChunk

HERE = Path(__file__).resolve().parent


class PerReadTimerVllm(VllmHttpAdapter):
    """The pre-base read loop: one ``asyncio.timeout`` per read."""

    async def _read(self, inflight: InFlight) -> bytes | None:
        async with asyncio.timeout(self.options.idle_timeout_s):
            return await super()._read(inflight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _one(adapter: HttpAdapter, i: int, tokens: int) -> int:
    req = GenerateRequest(task_id=f"t{i}", prompt="hello world", max_tokens=tokens, seed=i)
    n = 0
    async for ev in adapter.generate(req):
        if isinstance(ev, TokenChunk):
            n += ev.n_tokens
        elif isinstance(ev, Finished):
            break
    return n


async def _round(cls: type[HttpAdapter], url: str, streams: int, tokens: int) -> tuple[float, int]:
    opts = {"ctx": 8192} if issubclass(cls, VllmHttpAdapter) else {}
    adapter = cls(AdapterTarget(replica_id="bench", base_url=url, options=opts))
    try:
        await adapter.props()  # warm: session, /v1/models
        cpu0 = time.process_time()
        got = await asyncio.gather(*(_one(adapter, i, tokens) for i in range(streams)))
        cpu = time.process_time() - cpu0
    finally:
        await adapter.aclose()
    return cpu, sum(got)


async def main(args: argparse.Namespace) -> None:
    port = _free_port()
    engine = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "fake_engine.py"),
            "--port",
            str(port),
            "--token-delay-ms",
            str(args.token_delay_ms),
            "--slots",
            str(args.streams),
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except OSError:
                await asyncio.sleep(0.05)
        rows = {
            "llamacpp-http": LlamaCppHttpAdapter,
            "vllm-http": VllmHttpAdapter,
            "per-read timer (vllm-http, old loop)": PerReadTimerVllm,
        }
        cpu = dict.fromkeys(rows, 0.0)
        toks = dict.fromkeys(rows, 0)
        for _ in range(args.rounds):  # interleaved, so machine load hits all alike
            for name, cls in rows.items():
                c, n = await _round(cls, url, args.streams, args.tokens)
                cpu[name] += c
                toks[name] += n
        print(
            f"{args.streams} streams x {args.tokens} tokens x {args.rounds} rounds, "
            f"fake engine token delay {args.token_delay_ms} ms"
        )
        base = cpu["llamacpp-http"] / toks["llamacpp-http"]
        for name in rows:
            per = cpu[name] / toks[name]
            print(
                f"  {name:40s} {per * 1e6:8.1f} us CPU/token   ratio to llamacpp-http "
                f"{per / base:5.2f}   ({toks[name]} tokens)"
            )
    finally:
        os.killpg(engine.pid, signal.SIGTERM)
        engine.wait(timeout=10)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--token-delay-ms", type=float, default=2.0)
    asyncio.run(main(ap.parse_args()))
