"""ORCH-2821 on the facade: a streamed chat completion's run starts its engine
connect before the client's response head leaves orchestratord (the head's kernel
receive stamp against the connect's start on the same clock; both HTTP servers)."""

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


def _config(base_url: str, http_server: str) -> Config:
    doc: dict[str, Any] = {
        "server": {"port": 0, "shutdown_grace_s": 0.25, "http_server": http_server},
        "auth": {"enabled": False},
        "pools": [{"id": "p", "engine": "llamacpp-http", "model": "m", "endpoints": [base_url]}],
    }
    return msgspec.convert(doc, Config)


def _chat(port: int, text: str) -> bytes:
    body = json.dumps(
        {"model": "m", "stream": True, "max_tokens": 2,
         "messages": [{"role": "user", "content": text}]}
    ).encode()  # fmt: skip
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize("http_server", ["uvicorn", "hypercorn"])
async def test_the_engine_connect_begins_before_the_chat_stream_head(
    start_daemon, monkeypatch, http_server
):
    """Three streamed chat completions one after the other: each one's engine stream
    connect began before the first byte of its answer left orchestratord; the answer
    is the whole stream (the tokens, ``[DONE]``). Fails on 639a049."""
    begun: list[int] = []
    connect = _lean.StreamPool._connect

    async def timed(self: Any, loop: Any, family: int) -> Any:
        begun.append(time.time_ns())
        return await connect(self, loop, family)

    monkeypatch.setattr(_lean.StreamPool, "_connect", timed)
    with StampedLlamaServer() as engine:
        daemon = await start_daemon(_config(engine.base_url, http_server))
        port = int(daemon.url.rsplit(":", 1)[1])
        for _ in range(3):
            text = f"order {uuid.uuid4().hex}"
            begun.clear()
            head_at, answer = await asyncio.to_thread(stamped_head, port, _chat(port, text))
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
            assert b"data: [DONE]" in answer and b" t1" in answer, answer[-400:]
            assert sum(text in str(doc.get("prompt")) for _, doc in engine.completions) == 1
            assert len(begun) == 1 and head_at > 0, (begun, head_at)
            lead_us = (head_at - begun[0]) / 1000
            assert lead_us > 0, f"the head left {-lead_us:.0f} us before the engine connect"
