"""The ``echo`` engine: repeats the prompt's words, one token per word.

A stand-in for a real engine so the example stays self-contained: each
generation is an async loop that "decodes" one word every ``delay_ms``.
The words of the prompt are repeated until ``max_tokens``; a prompt that
ends with ``.`` is echoed once and then ends with end-of-sequence.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator
from typing import ClassVar

from llama_orch.core.adapter_api import (
    AdapterEvent,
    AdapterTarget,
    Capability,
    EngineMetrics,
    EngineProps,
    Finished,
    GenerateRequest,
    Health,
    TokenChunk,
    WorkerAdapter,
)
from llama_orch.core.errors import InvalidParams

__all__ = ["EchoAdapter"]

VERSION = "echo-1.0"


class EchoAdapter(WorkerAdapter):
    engine: ClassVar[str] = "echo"

    def __init__(self, target: AdapterTarget) -> None:
        super().__init__(target)
        opts = dict(target.options)
        self.slots = int(opts.get("slots", 4))
        self.ctx = int(opts.get("ctx", 2048))
        self.delay_s = float(opts.get("delay_ms", 2)) / 1000
        self.running: dict[str, bool] = {}  # task_id -> cancelled?
        self.prompt_tokens_total = 0
        self.generated_tokens_total = 0

    async def health(self) -> Health:
        return Health(live=True, ready=True)

    async def props(self) -> EngineProps:
        return EngineProps(
            engine=self.engine,
            engine_version=self.target.engine_version or VERSION,
            model_ref=self.target.model_ref or "echo",
            model_digest=self.target.model_digest
            or "sha256:" + hashlib.sha256(VERSION.encode()).hexdigest(),
            slots=self.slots,
            ctx=self.ctx,
            capabilities=frozenset({Capability.TOKENIZE, Capability.METRICS}),
        )

    async def tokenize(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]

    async def metrics(self) -> EngineMetrics:
        return EngineMetrics(
            requests_running=float(len(self.running)),
            requests_waiting=0.0,
            prompt_tokens_total=float(self.prompt_tokens_total),
            generated_tokens_total=float(self.generated_tokens_total),
            raw={"echo_generated_tokens_total": float(self.generated_tokens_total)},
        )

    async def cancel(self, task_id: str) -> None:
        if task_id in self.running:
            self.running[task_id] = True

    async def generate(self, req: GenerateRequest) -> AsyncGenerator[AdapterEvent, None]:
        words = req.prompt.split()
        if len(words) >= self.ctx:
            raise InvalidParams(
                f"prompt of {len(words)} tokens exceeds the context of {self.ctx}",
                engine=self.engine,
            )
        if not words:
            raise InvalidParams("empty prompt", engine=self.engine)
        self.running[req.task_id] = False
        self.prompt_tokens_total += len(words)
        once = req.prompt.rstrip().endswith(".")
        text, n, reason = "", 0, "length"
        try:
            while n < req.max_tokens:
                if once and n == len(words):
                    reason = "eos"
                    break
                await asyncio.sleep(self.delay_s)  # the engine's decode step
                if self.running[req.task_id]:
                    yield Finished(reason="canceled", tokens_generated=n, prompt_tokens=len(words))
                    return
                token = " " + words[n % len(words)]
                n += 1
                self.generated_tokens_total += 1
                hit = [i for s in req.stop if s and (i := (text + token).find(s)) >= 0]
                if hit:
                    cut = (text + token)[: min(hit)]
                    if cut[len(text) :]:
                        yield TokenChunk(cut[len(text) :], 1)
                    reason = "stop"
                    break
                text += token
                yield TokenChunk(token, 1)
        finally:
            self.running.pop(req.task_id, None)
        yield Finished(reason=reason, tokens_generated=n, prompt_tokens=len(words))
