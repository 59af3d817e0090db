"""Run orchestratord with monotonic timestamps at each stage of a request (issue #20).

    python bench/stage_probe.py OUT.json path/to/orchestratord --config FILE

Used by ``bench/ttft_stages.py``: wraps a few functions of the running process
(no code of the packages changes) and appends ``(stage, time.monotonic_ns())``
to a list, written to ``OUT.json`` when orchestratord exits. The clock is
``CLOCK_MONOTONIC``, the same in every process of the machine, so the client's
own timestamps line up with these.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

EVENTS: list[tuple[str, int]] = []
_now = time.monotonic_ns


def _mark(stage: str) -> None:
    EVENTS.append((stage, _now()))


def _wrap_sync(owner: Any, name: str, stage: str, after: bool = False) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not after:
            _mark(stage)
        out = fn(*args, **kwargs)
        if after:
            _mark(stage)
        return out

    setattr(owner, name, wrapper)


def _wrap_async(owner: Any, name: str, stage: str, done: str | None = None) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        _mark(stage)
        out = await fn(*args, **kwargs)
        if done:
            _mark(done)
        return out

    setattr(owner, name, wrapper)


def install() -> None:
    from llama_orch.adapter_http import _lean
    from llama_orch.orchestratord import app, dispatch, leanroutes, limits, runner, service, writes

    # the request's bytes arrive on hypercorn's connection (its StreamReaderProtocol);
    # under uvicorn on its httptools protocol (below)
    _wrap_sync(asyncio.streams.StreamReaderProtocol, "data_received", "req_in")
    _wrap_async(leanroutes.LeanRoutes, "__call__", "asgi")
    _wrap_async(service.Orchestrator, "submit", "admit", "admitted")
    _wrap_async(limits.TaskStream, "__call__", "stream_open")
    _wrap_sync(dispatch.Dispatcher, "launch", "dispatch")
    _wrap_async(runner.TaskRun, "__call__", "run_start")
    conn = _lean.StreamConn
    _wrap_sync(_lean.StreamPool, "acquire", "eng_acquire")
    _wrap_sync(conn, "connection_made", "eng_connected")
    _wrap_sync(conn, "start", "eng_written", after=True)
    _wrap_sync(conn, "data_received", "eng_bytes")
    _wrap_sync(runner.TaskRun, "_on_token", "token")
    from llama_orch.adapter_http import base
    from llama_orch.adapters.llamacpp_http import _adapter

    _wrap_async(base.HttpAdapter, "call", "engine_call", "engine_call_done")
    _wrap_async(base.HttpAdapter, "fetch", "engine_fetch", "engine_fetch_done")
    _wrap_async(_adapter.LlamaCppHttpAdapter, "apply_chat_template", "chat_tpl", "chat_tpl_done")
    flush: Callable[..., None] = writes.CoalescingWriter.flush

    def flush_marked(self: Any) -> None:
        busy = bool(self._pending)
        if busy:
            _mark("writing")
        flush(self)
        if busy:
            _mark("written")

    writes.CoalescingWriter.flush = flush_marked  # type: ignore[method-assign]
    _ = app  # imported so the endpoints are built after the wrappers
    try:  # under uvicorn (ORCH-2810): its protocol reads, its coalescing transport writes
        from llama_orch.orchestratord import uvserve
    except ImportError:  # sources before ORCH-2810, or without the [uvicorn] extra
        return
    _wrap_sync(uvserve.BoundedHeadProtocol, "data_received", "req_in")
    uv_flush: Callable[..., None] = uvserve.CoalescingTransport.flush

    def uv_flush_marked(self: Any) -> None:
        busy = bool(self._pending)
        if busy:
            _mark("writing")
        uv_flush(self)
        if busy:
            _mark("written")

    uvserve.CoalescingTransport.flush = uv_flush_marked  # type: ignore[method-assign]


def _dump(path: str) -> None:
    with open(path, "w") as f:
        json.dump(EVENTS, f)


def main() -> int:
    out = sys.argv[1]
    install()
    atexit.register(_dump, out)
    from llama_orch.orchestratord.main import main as orch_main

    return orch_main(sys.argv[3:])  # after the orchestratord script's path


if __name__ == "__main__":
    sys.exit(main())
