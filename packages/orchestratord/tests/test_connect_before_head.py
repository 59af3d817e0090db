"""ORCH-2821: a streaming submit's run starts its engine connect before the client's
response head leaves orchestratord.

orchestratord is served by its own HTTP server (both servers) in front of a fake
``llama-server`` (``llama_orch.testing_engines.stamped``); the client's socket
carries the kernel's receive stamps (on loopback a segment is stamped in its
sender's ``send``), and the engine stream's connect is timed on the same clock
(``CLOCK_REALTIME``) as it begins, in orchestratord's thread. The head's stamp is
of the answer's first segment.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import msgspec
import pytest
from llama_orch.adapter_http import _lean
from llama_orch.core.config import Config
from llama_orch.testing_engines.stamped import StampedLlamaServer, stamped_head

SERVERS = ["uvicorn", "hypercorn"]


def _config(base_url: str, http_server: str) -> Config:
    doc: dict[str, Any] = {
        "server": {"port": 0, "shutdown_grace_s": 0.25, "http_server": http_server},
        "auth": {"enabled": False},
        "pools": [{"id": "p", "engine": "llamacpp-http", "model": "m", "endpoints": [base_url]}],
    }
    return msgspec.convert(doc, Config)


def _submit(port: int, prompt: str) -> bytes:
    body = json.dumps({"prompt": prompt, "max_tokens": 2}).encode()
    return (
        f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def timed_connects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``time.time_ns()`` as each new engine stream connection begins."""
    begun: list[int] = []
    connect = _lean.StreamPool._connect

    async def timed(self: Any, loop: Any, family: int) -> Any:
        begun.append(time.time_ns())
        return await connect(self, loop, family)

    monkeypatch.setattr(_lean.StreamPool, "_connect", timed)
    return begun


@pytest.mark.parametrize("http_server", SERVERS)
async def test_the_engine_connect_begins_before_the_response_head(
    start_orchestrator, monkeypatch, http_server
):
    """Three streaming submits one after the other on an idle pool: each one's engine
    stream connect began before the first byte of its answer left orchestratord, and
    the answer is the whole stream (200, the tokens, ``end``). Fails on 639a049: the
    head was written in the turn after the dispatch, before the run's first step."""
    begun = timed_connects(monkeypatch)
    with StampedLlamaServer() as engine:
        run = await start_orchestrator(_config(engine.base_url, http_server))
        port = int(run.url.rsplit(":", 1)[1])
        for _ in range(3):
            prompt = f"order {uuid.uuid4().hex}"
            begun.clear()
            head_at, answer = await asyncio.to_thread(stamped_head, port, _submit(port, prompt))
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert b"event: end" in answer and b" t1" in answer, answer[-400:]
            assert [doc["prompt"] for _, doc in engine.completions].count(prompt) == 1
            assert len(begun) == 1 and head_at > 0, (begun, head_at)
            lead_us = (head_at - begun[0]) / 1000
            assert lead_us > 0, f"the head left {-lead_us:.0f} us before the engine connect"
