"""The engine stream client's decoding cost per chunk, this tree against a git ref (issue #20).

    uv run --frozen python bench/stream_decode.py --compare-ref 5fa5de8

Feeds a llama.cpp-sized chunked answer to ``adapter_http._lean.StreamConn`` of both
sources (the ref's module loaded from ``git show``), one and eight chunks per read,
``--reads`` reads per block, the sides alternating for ``--blocks`` blocks; prints the
minimum and the median time per chunk (``data_received`` plus the ``read`` that takes
the bytes). Timing-sensitive: under ``flock /work/bench.lock``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LEAN = "packages/adapter-http/src/llama_orch/adapter_http/_lean.py"
EVENT = (
    b'data: {"index":0,"content":" token","tokens":[123],"stop":false,"id_slot":0,'
    b'"tokens_predicted":1,"tokens_evaluated":9}\n\n'
)
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Transport(asyncio.Transport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.StreamConn


async def _block(conn_type: Any, per_read: int, reads: int) -> float:
    conn = conn_type(asyncio.get_running_loop())
    conn.connection_made(_Transport())
    conn.start(b"POST / HTTP/1.1\r\n\r\n")
    conn.data_received(HEAD)
    data = CHUNK * per_read
    want = EVENT * per_read
    t0 = time.perf_counter()
    for _ in range(reads):
        conn.data_received(data)
        got = await conn.read()
    elapsed = time.perf_counter() - t0
    assert got == want
    return elapsed / (reads * per_read)


async def _run(sides: dict[str, Any], reads: int, blocks: int) -> list[str]:
    lines = []
    for per_read in (1, 8):
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(blocks):
            for name, conn_type in sides.items():
                times[name].append(await _block(conn_type, per_read, reads))
        for name, ts in times.items():
            lines.append(
                f"{per_read} chunk(s)/read, {name}: min {min(ts) * 1e6:.2f} us,"
                f" median {statistics.median(ts) * 1e6:.2f} us per chunk"
            )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare-ref", default=None, metavar="GIT_REF")
    ap.add_argument("--reads", type=int, default=20_000)
    ap.add_argument("--blocks", type=int, default=7)
    args = ap.parse_args()
    sides: dict[str, Any] = {}
    if args.compare_ref:
        source = subprocess.run(
            ["git", "show", f"{args.compare_ref}:{LEAN}"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        tmp = Path(tempfile.mkdtemp(prefix="llorch-decode-")) / "lean_ref.py"
        tmp.write_bytes(source)
        sides[args.compare_ref] = _load(tmp, "lean_ref")
    sides["this tree"] = _load(ROOT / LEAN, "lean_tree")
    load = Path("/proc/loadavg").read_text().split()[:3]
    lines = asyncio.run(_run(sides, args.reads, args.blocks))
    end = Path("/proc/loadavg").read_text().split()[:3]
    print(f"stream_decode: load {' '.join(load)} -> {' '.join(end)}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
