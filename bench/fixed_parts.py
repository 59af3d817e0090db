"""Parts of orchestratord's CPU per request and per token, in process, this tree against
a git ref (issue #20, session 17: ORCH-2804..2806; session 20: ORCH-2822..2824; session 21:
ORCH-2956, ORCH-2957; session 22: ORCH-2964).

    flock /work/bench.lock uv run --frozen python bench/fixed_parts.py --compare-ref dbd6fc9

Parts, each in µs of process CPU time per call, the median of ``--blocks`` blocks:

- ``log``: ``telemetry.log_task_end`` under the daemon's ``configure_logging("INFO")``,
  stderr on ``/dev/null`` (the task-end line, ORCH-2804);
- ``connect``: ``adapter_http._lean.StreamPool.acquire`` of a new connection to a
  listener on 127.0.0.1, then its close (ORCH-2805; the listener's accepts are not timed);
- ``ids``: one task ID and one correlation ID as admission and the correlation
  middleware make them (ORCH-2806; the ref's ``uuid.uuid4()`` forms where it has no
  ``orchestratord.ids``);
- ``parse`` (per token): the llama.cpp adapter's ``CompletionStream`` fed the fake
  engine's 128-token ``/completion`` stream one event per read, as ``HttpAdapter.generate``
  feeds it (the engine stream's SSE parse and decode, ORCH-2824);
- ``frames`` (per event): ``FrontendHost.event_batches`` of a finished task's log (a
  ``started``, a ``metrics``, 32 tokens, the end) read from the start in batches of 4
  events, as a facade's stream loop reads them (ORCH-2956; no state store);
- ``line``: ``RobustLine.params3`` of a first-token line with its second feature after
  50 samples, at one instant (ORCH-2957);
- ``open``: ``HttpAdapter._open_stream`` over a stub pool whose connection answers 200
  at once (the error mapping, the deadline over the connect and the head, the retry
  loop; no socket: ORCH-2964).

Each side runs in its own child process (the ref's ``packages/*/src`` first on
``PYTHONPATH``, from ``git archive``), the sides alternating for ``--rounds`` rounds;
printed: per part and side, the median over rounds of the blocks' medians, and the
load average before and after. Timing-sensitive: under ``flock /work/bench.lock``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _blocks(call: Callable[[], object], n: int, blocks: int) -> float:
    call()
    out = []
    for _ in range(blocks):
        t0 = time.process_time()
        for _ in range(n):
            call()
        out.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(out)


def _log_part(blocks: int) -> float:
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    os.dup2(devnull, 2)
    try:
        from llama_orch.orchestratord import main, telemetry

        main.configure_logging("INFO")
        rec = SimpleNamespace(
            task_id=str(uuid.uuid4()), session_id=None, tenant="default",
            correlation_id=uuid.uuid4().hex, api="native", engine="llamacpp",
            engine_version="b1234", pool_id="p0", replica_id="r0", kv_warmth="cold",
            priority="interactive", state="completed", created=100.0, dispatched=100.0012,
            finished_at=100.004, first_token=100.003, prompt_tokens=12, tokens_out=1,
            queue_position=0, predicted_start_ms=1.5, error_code=None,
        )  # fmt: skip
        pool = SimpleNamespace(
            states={"r0": SimpleNamespace(model_ref="m", ctx=4096)},
            config=SimpleNamespace(model="m", ctx=4096),
        )
        return _blocks(lambda: telemetry.log_task_end(rec, pool), 5000, blocks)  # type: ignore[arg-type]
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


async def _connect_part(blocks: int) -> float:
    from llama_orch.adapter_http._lean import StreamPool

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    srv.setblocking(False)
    pool = StreamPool(
        f"http://127.0.0.1:{srv.getsockname()[1]}", keepalive_s=30.0, connect_timeout_s=10.0
    )
    n = 200
    times = []
    for i in range(blocks + 1):
        t0 = time.process_time()
        for _ in range(n):
            conn = await pool.acquire()
            conn.close()
        took = (time.process_time() - t0) / n * 1e6
        await asyncio.sleep(0)
        while True:  # the accept queue emptied outside the timed part
            try:
                srv.accept()[0].close()
            except BlockingIOError:
                break
        if i:
            times.append(took)
    srv.close()
    return statistics.median(times)


def _ids_part(blocks: int) -> float:
    try:
        from llama_orch.orchestratord import ids  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return _blocks(lambda: (str(uuid.uuid4()), uuid.uuid4().hex.encode()), 20_000, blocks)
    return _blocks(lambda: (ids.new_task_id(), ids.new_correlation_id()), 20_000, blocks)


_TOKENS = 128


def _parse_part(blocks: int) -> float:
    from llama_orch.adapters.llamacpp_http._stream import CompletionStream

    events = [
        b'data: {"index":0,"content":" t%d","tokens":[%d],"stop":false,"id_slot":0,'
        b'"tokens_predicted":%d,"tokens_evaluated":%d}\n\n' % (i, 1000 + i, i + 1, 12)
        for i in range(_TOKENS)
    ]
    events.append(
        b'data: {"index":0,"content":"","tokens":[],"id_slot":0,"stop":true,'
        b'"model":"m","tokens_predicted":%d,"tokens_evaluated":12,'
        b'"has_new_line":false,"truncated":false,"stop_type":"limit",'
        b'"stopping_word":"","tokens_cached":%d,"timings":{}}\n\n' % (_TOKENS, 12 + _TOKENS)
    )

    def stream() -> None:
        decoder = CompletionStream()
        for data in events:
            decoder.feed(data)

    return _blocks(stream, 200, blocks) / _TOKENS


def _frames_part(blocks: int) -> float:
    from llama_orch.core.adapter_api import GenerateRequest
    from llama_orch.core.api import EndEvent, MetricsEvent, StartedEvent, TokenEvent
    from llama_orch.orchestratord.frontends import FrontendHost
    from llama_orch.orchestratord.tasks import TaskRecord

    class Batched(TaskRecord):
        """Its log's frames in batches of 4, as a live reader wakes to them."""

        async def frames(self, start: int = 0, max_chunk: int = 0, keepalive_s: Any = None) -> Any:
            frames = self.frames_so_far()
            for i in range(start, len(frames), 4):
                yield b"".join(frames[i : i + 4])

    req = GenerateRequest(task_id="t", prompt="p", max_tokens=32, seed=1)
    rec = Batched("t", "pool", "mock", "interactive", req, 12)
    events: list[Any] = [
        StartedEvent(
            queue_position=0, predicted_start_ms=0, queue_wait_ms=1, pool_id="pool",
            replica_id="r0", engine="llamacpp", engine_version="b1", model_digest="sha",
        ),
        MetricsEvent(queue_depth=0, kv_warmth=False),
    ]  # fmt: skip
    events += [TokenEvent(f" t{i}", i) for i in range(32)]
    for ev in events:
        rec.append(ev)
    rec.finish(EndEvent(tokens_out=32, decode_ms=20, reason="length", tokens_in=12))
    host = FrontendHost(SimpleNamespace(state=None), SimpleNamespace())  # type: ignore[arg-type]
    n_frames = len(rec.frames_so_far())

    async def read() -> None:
        async for batch in host.event_batches(rec):
            for _ in batch:
                pass

    def one() -> None:
        coro = read()
        try:
            coro.send(None)
        except StopIteration:
            pass

    return _blocks(one, 2_000, blocks) / n_frames


def _line_part(blocks: int) -> float:
    import random

    from llama_orch.core.servicetime import RobustLine

    rng = random.Random(1)
    line = RobustLine(20.0, 0.1, 512.0, 4.0, 600.0, 512.0**2)
    for i in range(50):
        line.observe(rng.randint(1, 500), rng.uniform(10, 80), i * 0.01, rng.randint(1, 250_000))
    return _blocks(lambda: line.params3(1.0), 50_000, blocks)


async def _open_part(blocks: int) -> float:
    from llama_orch.adapter_http import HttpAdapter
    from llama_orch.core.adapter_api import AdapterTarget

    class Conn:
        reused = False

        def start(self, request: bytes) -> None:
            pass

        async def head(self) -> int:
            return 200

    conn = Conn()

    class Pool:
        def request(self, path: str, body: bytes, headers: bytes) -> bytes:
            return body

        async def acquire(self) -> Conn:
            return conn

    pool = Pool()

    class Adapter(HttpAdapter):  # type: ignore[misc]
        engine = "bench"

        def _streams(self) -> Any:
            return pool

    target = AdapterTarget(replica_id="r", base_url="http://127.0.0.1:9", options={})
    Adapter.__abstractmethods__ = frozenset()  # only ``_open_stream`` is called
    adapter = Adapter(target)
    n = 20_000
    times = []
    for i in range(blocks + 1):
        t0 = time.process_time()
        for _ in range(n):
            await adapter._open_stream("/completion", b"{}")
        if i:
            times.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(times)


def _under_uvloop(coro: Any) -> float:
    import uvloop  # the daemon's loop (ORCH-2819): the timers are uvloop's

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result: float = runner.run(coro)
    return result


def _child(blocks: int) -> None:
    out = {
        "log": _log_part(blocks),
        "connect": asyncio.run(_connect_part(blocks)),
        "ids": _ids_part(blocks),
        "parse": _parse_part(blocks),
        "frames": _frames_part(blocks),
        "line": _line_part(blocks),
        "open": _under_uvloop(_open_part(blocks)),
    }
    print(json.dumps(out))


def _ref_tree(ref: str) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="llorch-fixed-parts-"))
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "packages"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    tar = tmp / "ref.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(tmp, filter="data")
    return tmp


def _run_side(pythonpath: str | None, blocks: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--blocks", str(blocks)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare-ref", default=None, metavar="GIT_REF")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.blocks)
        return 0
    sides: dict[str, str | None] = {}
    if args.compare_ref:
        tree = _ref_tree(args.compare_ref)
        srcs = sorted(str(p) for p in (tree / "packages").glob("*/src"))
        sides[args.compare_ref] = os.pathsep.join(srcs)
    sides["this tree"] = None
    load = Path("/proc/loadavg").read_text().split()[:3]
    got: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides.items())
        if r % 2:
            order.reverse()
        for name, path in order:
            got[name].append(_run_side(path, args.blocks))
    end = Path("/proc/loadavg").read_text().split()[:3]
    print(f"fixed_parts: load {' '.join(load)} -> {' '.join(end)}; {args.rounds} rounds")
    parts: list[str] = ["log", "connect", "ids", "parse", "frames", "line", "open"]
    for part in parts:
        row: list[Any] = []
        for name, runs in got.items():
            vals = [run[part] for run in runs]
            row.append(
                f"{name} {statistics.median(vals):.2f} us [{min(vals):.2f}..{max(vals):.2f}]"
            )
        print(f"  {part}: " + "; ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
