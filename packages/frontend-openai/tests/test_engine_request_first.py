"""ORCH-2820 on the facade: a streamed chat completion's engine request leaves
orchestratord before the client's response head (kernel receive stamps on both
sockets, ``llama_orch.testing_engines.stamped``; both HTTP servers)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.orchestratord.opening import HEAD_HOLD_S
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
async def test_the_engine_request_leaves_before_the_chat_stream_head(start_daemon, http_server):
    """Three streamed chat completions one after the other: each one's engine
    request was received before the first byte of its answer, the answer is the
    whole stream (the tokens, ``[DONE]``). Fails without ORCH-2820."""
    with StampedLlamaServer() as engine:
        daemon = await start_daemon(_config(engine.base_url, http_server))
        port = int(daemon.url.rsplit(":", 1)[1])
        for _ in range(3):
            text = f"order {uuid.uuid4().hex}"
            head_at, answer = await asyncio.to_thread(stamped_head, port, _chat(port, text))
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
            assert b"data: [DONE]" in answer and b" t1" in answer, answer[-400:]
            sent = [at for at, doc in engine.completions if text in str(doc.get("prompt"))]
            assert len(sent) == 1, engine.completions
            assert sent[0] > 0 and head_at > 0  # both stamped by the kernel
            lead_us = (head_at - sent[0]) / 1000
            assert lead_us > 0, f"the head left {-lead_us:.0f} us before the engine request"
            assert lead_us < HEAD_HOLD_S * 1e6, lead_us  # ended on the request, not the bound
