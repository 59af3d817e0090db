"""The ``echo`` adapter: an HTTP engine adapter built on ``llama-orch-adapter-http``.

The engine is :mod:`echo_adapter.server` (run it with
``python -m echo_adapter.server --port N``). Everything engine-independent
(session and connection policy, timed calls with transport errors mapped to
core errors, the stream loop and its idle timer, cancel by disconnect,
``aclose``) is :class:`~llama_orch.adapter_http.HttpAdapter`'s; this module
holds only the wire mapping: the request body, the stream decoder, the
error table, props, tokenize and metrics.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec
from llama_orch.adapter_http import HttpAdapter, HttpTimeouts, SSEStream
from llama_orch.core.adapter_api import (
    AdapterEvent,
    Capability,
    EngineMetrics,
    EngineProps,
    Finished,
    GenerateRequest,
    StopReason,
    TokenChunk,
)
from llama_orch.core.errors import InvalidParams, OrchError, ReplicaExhausted, WorkerReset
from llama_orch.core.prometheus import parse_prometheus

__all__ = ["EchoAdapter"]


class _Info(msgspec.Struct):
    version: str
    model: str
    digest: str
    slots: int
    ctx: int


class _Event(msgspec.Struct):  # one `data:` payload of the stream
    text: str = ""
    done: bool = False
    reason: StopReason = "length"
    tokens: int = 0
    prompt_tokens: int = 0


class _Tokens(msgspec.Struct):
    tokens: list[int]


class _Stream(SSEStream[_Event]):
    final = "done event"

    def __init__(self) -> None:
        super().__init__(msgspec.json.Decoder(_Event), "echo")
        self.tokens_generated = 0

    def on_event(self, event: _Event) -> list[AdapterEvent]:
        if event.done:
            self.finished = Finished(
                reason=event.reason,
                tokens_generated=event.tokens,
                prompt_tokens=event.prompt_tokens,
            )
            return [self.finished]
        self.tokens_generated += 1
        return [TokenChunk(event.text, 1)]


def _error_table(status: int, body: bytes, what: str) -> OrchError:
    detail = body[:200].decode("utf-8", "replace")
    if status == 400:
        return InvalidParams(detail, engine="echo")
    if status == 429:
        return ReplicaExhausted(detail, engine="echo")
    return WorkerReset(f"{what}: HTTP {status}: {detail}", engine="echo")


class EchoAdapter(HttpAdapter):
    engine: ClassVar[str] = "echo"
    options_type = HttpTimeouts
    error_table = staticmethod(_error_table)

    async def stream_request(self, req: GenerateRequest) -> tuple[str, object]:
        return "/generate", {"prompt": req.prompt, "max_tokens": req.max_tokens, "stop": req.stop}

    def new_decoder(self, req: GenerateRequest) -> _Stream:
        return _Stream()

    async def props(self) -> EngineProps:
        info = self.decode(msgspec.json.Decoder(_Info), await self.call("GET", "/info"), "info")
        return EngineProps(
            engine=self.engine,
            engine_version=self.target.engine_version or info.version,
            model_ref=self.target.model_ref or info.model,
            model_digest=self.target.model_digest or info.digest,
            slots=info.slots,
            ctx=info.ctx,
            capabilities=frozenset({Capability.TOKENIZE, Capability.METRICS}),
        )

    async def tokenize(self, text: str) -> list[int]:
        payload = await self.call("POST", "/tokenize", {"text": text})
        return self.decode(msgspec.json.Decoder(_Tokens), payload, "tokenize").tokens

    async def metrics(self) -> EngineMetrics:
        raw = parse_prometheus((await self.call("GET", "/metrics")).decode())
        return EngineMetrics(
            requests_running=raw.get("echo_requests_running"),
            requests_waiting=0.0,
            prompt_tokens_total=raw.get("echo_prompt_tokens_total"),
            generated_tokens_total=raw.get("echo_generated_tokens_total"),
            raw=raw,
        )
