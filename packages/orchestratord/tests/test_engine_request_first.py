"""ORCH-2820: a streaming submit's engine request leaves orchestratord before the
client's response head.

orchestratord is served by its own HTTP server (both servers) in front of a fake
``llama-server`` whose sockets carry the kernel's receive stamps, and the client's
socket too: on loopback a segment is stamped in its sender's ``send``, so the two
stamps order the two writes orchestratord made. The engine's stamp is of the
request's last segment, the client's of the answer's first: the comparison is the
strict one.
"""

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


@pytest.mark.parametrize("http_server", SERVERS)
async def test_the_engine_request_leaves_before_the_response_head(start_orchestrator, http_server):
    """Three streaming submits one after the other on an idle pool: each one's
    ``/completion`` request was received by the engine before the client received
    the first byte of its answer, and the answer is the whole stream (200, the
    tokens, ``end``). Fails without ORCH-2820: the head was written in the turn
    after the dispatch, before the run's engine connect."""
    with StampedLlamaServer() as engine:
        run = await start_orchestrator(_config(engine.base_url, http_server))
        port = int(run.url.rsplit(":", 1)[1])
        for _ in range(3):
            prompt = f"order {uuid.uuid4().hex}"
            head_at, answer = await asyncio.to_thread(stamped_head, port, _submit(port, prompt))
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert b"event: end" in answer and b" t1" in answer, answer[-400:]
            sent = [at for at, doc in engine.completions if doc.get("prompt") == prompt]
            assert len(sent) == 1, engine.completions
            assert sent[0] > 0 and head_at > 0  # both stamped by the kernel
            lead_us = (head_at - sent[0]) / 1000
            assert lead_us > 0, f"the head left {-lead_us:.0f} us before the engine request"
            # the hold ended on the request, not on its bound
            assert lead_us < HEAD_HOLD_S * 1e6, lead_us
