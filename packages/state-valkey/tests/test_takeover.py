"""kill -9 of an instance mid-stream: no accepted task is lost (ORCH-2511, ORCH-2508).

Two instance processes (``_instance.py``) share one real server. When instance A
is streaming, it gets SIGKILL. Instance B reaps A's expired leases: tasks without
events go back to the queue, streaming ones are continued from their last token
under a new epoch. Every accepted task then has exactly one terminal event and
contiguous token indices with no repeat, and every slot is free again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from llama_orch.core.state_store import PoolPolicy, SlotView, StoreConfig, TaskSpec
from llama_orch.state_valkey import ValkeyStateStore

pytestmark = pytest.mark.asyncio
WORKER = Path(__file__).with_name("_instance.py")
TOKENS = 15


def _start(url: str, prefix: str, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, prefix, name, str(TOKENS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


async def test_kill_9_of_an_instance_loses_no_task(valkey_url: str) -> None:
    prefix = "takeover"
    store = ValkeyStateStore(valkey_url, key_prefix=prefix)
    await store.start()
    a = b = None
    try:
        await store.configure(StoreConfig(pools={"p": PoolPolicy(capacity=100)}))
        slots = [SlotView(replica_id=f"r{n}", set_key="A", ready=True, slots=2) for n in (1, 2)]
        await store.set_replicas("p", slots)
        ids = [f"t{n}" for n in range(10)]
        for tid in ids:
            await store.submit(TaskSpec(task_id=tid, pool="p", priority="batch"))
        a = _start(valkey_url, prefix, "A")
        assert a.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(a.stdout.readline), 60)
        assert line.startswith("STREAMING"), line + (a.stderr.read() if a.stderr else "")
        b = _start(valkey_url, prefix, "B")
        os.killpg(a.pid, signal.SIGKILL)  # mid-stream, holding up to 4 slots
        logs = {}
        for tid in ids:
            logs[tid] = [e async for e in store.tail(tid)]
            await asyncio.sleep(0)
        for tid, log in logs.items():
            kinds = [e.kind for e in log]
            assert kinds.count("end") == 1 and kinds[-1] == "end", (tid, kinds)
            assert kinds.count("started") == 1 and kinds[0] == "started", (tid, kinds)
            idx = [msgspec.json.decode(e.data)["i"] for e in log if e.kind == "token"]
            assert idx == list(range(TOKENS)), (tid, idx)
        assert await store.busy("p") == {}
        _stop(b)
        said = b.stdout.read() if b.stdout else ""
        claimed = [ln.split()[1] for ln in said.splitlines() if ln.startswith("CLAIMED")]
        assert claimed, said  # at least the stream A was killed in was continued by B
        for tid in claimed:
            view = await store.task(tid)
            assert view is not None and view.owner == "B"
    finally:
        for proc in (a, b):
            if proc is not None:
                _stop(proc)
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
        await store.close()
