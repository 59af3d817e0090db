"""The mock engine: a deterministic fake that behaves like a slot-limited engine.

Each generation owns one slot and a *producer* task that "decodes" tokens
into a queue at ``token_delay_ms`` per token, independently of how fast the
consumer reads, as a real engine does. Closing the iterator (``aclose()`` or
cancelling the consuming task) frees the slot synchronously and cancels the
producer, so ``generated_tokens_total`` stops growing at once (ORCH-3006).

Faults (option ``fail``) let the orchestrator's tests exercise every error
path of the adapter contract without a real engine (ORCH-3007).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import ClassVar

from llama_orch.core.adapter_api import (
    AdapterEvent,
    AdapterTarget,
    Capability,
    Embeddings,
    EngineMetrics,
    EngineProps,
    Finished,
    GenerateRequest,
    Health,
    StopReason,
    TokenChunk,
    WorkerAdapter,
)
from llama_orch.core.errors import (
    InvalidParams,
    OrchError,
    PoolUnready,
    ReplicaExhausted,
    WorkerReset,
)

from ._options import MockOptions, parse_options
from ._text import render_chat, token_text, tokenize_text

__all__ = ["CANCELLED", "MockAdapter"]

CANCELLED: StopReason = "canceled"  # Finished.reason after cancel(task_id) (adapter_api, ORCH-3006)
_QueueItem = TokenChunk | Finished | OrchError


@dataclass(eq=False)
class _Generation:
    req: GenerateRequest
    prompt_tokens: int
    queue: asyncio.Queue[_QueueItem] = field(default_factory=asyncio.Queue)
    producer: asyncio.Task[None] | None = None
    produced: int = 0
    cancelled: bool = False
    closed_by_adapter: WorkerReset | None = None


class MockAdapter(WorkerAdapter):
    """In-process deterministic engine; ``props().engine`` is always ``"mock"``."""

    engine: ClassVar[str] = "mock"

    def __init__(self, target: AdapterTarget) -> None:
        super().__init__(target)
        self.options: MockOptions = parse_options(dict(target.options))
        self._running: dict[str, _Generation] = {}
        self.prompt_tokens_total = 0
        self.generated_tokens_total = 0
        self.generations_started = 0
        self.generations_finished = 0  # ended with a Finished event
        self.generations_aborted = 0  # closed, cancelled or failed before Finished

    # -- observability for tests ------------------------------------------
    @property
    def busy_slots(self) -> int:
        return len(self._running)

    @property
    def live_producers(self) -> int:
        """Producer tasks still able to emit tokens (0 once every stream is closed)."""
        return sum(
            1 for g in self._running.values() if g.producer is not None and not g.producer.done()
        )

    # -- contract -----------------------------------------------------------
    async def health(self) -> Health:
        if self.options.fault.kind == "unready":
            return Health(live=True, ready=False, detail="mock fault: unready")
        return Health(live=True, ready=True)

    async def props(self) -> EngineProps:
        caps = {
            Capability.INTERRUPTIBLE_DECODE,
            Capability.TOKENIZE,
            Capability.METRICS,
            Capability.SEEDED_SAMPLING,
            Capability.CHAT_TEMPLATE,
        }
        if self.options.embed_only:
            caps = {Capability.TOKENIZE, Capability.METRICS, Capability.EMBED_ONLY}
        if self.options.embeddings or self.options.embed_only:
            caps.add(Capability.EMBED)
        if self.options.engine_slots:
            caps.add(Capability.ENGINE_SLOTS)
        return EngineProps(
            engine=self.engine,
            engine_version=self.options.engine_version,
            model_ref=self.target.model_ref or "mock-model",
            model_digest=self.options.model_digest,
            slots=self.options.slots,
            ctx=self.options.ctx,
            capabilities=frozenset(caps),
        )

    async def generate(self, req: GenerateRequest) -> AsyncGenerator[AdapterEvent, None]:
        """Admission errors are raised by the first ``__anext__``."""
        if self.options.embed_only:
            raise InvalidParams("mock: an embedding engine generates nothing", engine=self.engine)
        gen = self._admit(req)
        try:
            if self.options.fault.kind == "error_at_start":
                raise WorkerReset("mock fault: error_at_start", engine=self.engine)
            gen.producer = asyncio.create_task(
                self._produce(gen), name=f"mock-producer-{req.task_id}"
            )
            while True:
                item = await gen.queue.get()
                if gen.closed_by_adapter is not None:
                    raise gen.closed_by_adapter  # queued tokens are moot
                if gen.cancelled:  # cancel(task_id) already freed the slot
                    yield Finished(
                        reason=CANCELLED,
                        tokens_generated=gen.produced,
                        prompt_tokens=gen.prompt_tokens,
                    )
                    return
                if isinstance(item, OrchError):
                    raise item
                if isinstance(item, Finished):
                    # Free the slot before handing out the last event: a consumer
                    # that stops iterating after Finished must not pin it.
                    await self._release(gen, finished=True)
                    yield item
                    return
                yield item
        finally:
            await self._release(gen, finished=False)

    async def cancel(self, task_id: str) -> None:
        gen = self._running.get(task_id)
        if gen is None:
            return
        gen.cancelled = True
        await self._release(gen, finished=False)
        gen.queue.put_nowait(Finished(reason=CANCELLED, tokens_generated=gen.produced))  # wake

    async def tokenize(self, text: str) -> list[int]:
        return tokenize_text(text)

    async def embed(self, texts: list[str]) -> Embeddings:
        """With option ``embeddings``: a vector per text from its SHA-256, so equal
        texts get equal vectors (ORCH-9210)."""
        if not (self.options.embeddings or self.options.embed_only):
            return await super().embed(texts)
        vectors = [[b / 255 - 0.5 for b in hashlib.sha256(t.encode()).digest()[:8]] for t in texts]
        return Embeddings(vectors=vectors, prompt_tokens=sum(len(tokenize_text(t)) for t in texts))

    async def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        for m in messages:
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise InvalidParams("each chat message needs string 'role' and 'content'")
        return render_chat(messages)

    async def metrics(self) -> EngineMetrics:
        running = float(len(self._running))
        raw = {
            "mock:requests_running": running,
            "mock:prompt_tokens_total": float(self.prompt_tokens_total),
            "mock:generated_tokens_total": float(self.generated_tokens_total),
        }
        return EngineMetrics(
            requests_running=running,
            requests_waiting=0.0,
            prompt_tokens_total=float(self.prompt_tokens_total),
            generated_tokens_total=float(self.generated_tokens_total),
            # the mock holds no KV cache: a busy slot counts as a full one (ORCH-7003)
            kv_cache_usage_ratio=running / self.options.slots,
            raw=raw,
        )

    async def aclose(self) -> None:
        """Stop every generation; a consumer still reading gets WorkerReset."""
        for gen in list(self._running.values()):
            await self._release(gen, finished=False)
            gen.closed_by_adapter = WorkerReset("mock adapter closed", engine=self.engine)
            gen.queue.put_nowait(gen.closed_by_adapter)  # wake the reader

    # -- internals ----------------------------------------------------------
    def _admit(self, req: GenerateRequest) -> _Generation:
        if self.options.fault.kind == "unready":
            raise PoolUnready("mock fault: unready", engine=self.engine)
        if req.max_tokens < 0:
            raise InvalidParams("max_tokens must be >= 0", engine=self.engine)
        if req.task_id in self._running:
            raise InvalidParams(f"task {req.task_id!r} is already running", engine=self.engine)
        if len(self._running) >= self.options.slots:
            raise ReplicaExhausted(
                f"all {self.options.slots} mock slots are busy", engine=self.engine
            )
        n_prompt = len(tokenize_text(req.prompt))
        if n_prompt >= self.options.ctx:
            raise InvalidParams(
                f"request ({n_prompt} tokens) exceeds the available context size "
                f"({self.options.ctx} tokens)",
                engine=self.engine,
            )
        gen = _Generation(req=req, prompt_tokens=n_prompt)
        self._running[req.task_id] = gen
        self.generations_started += 1
        self.prompt_tokens_total += n_prompt
        return gen

    async def _release(self, gen: _Generation, *, finished: bool) -> None:
        if self._running.get(gen.req.task_id) is gen:
            del self._running[gen.req.task_id]  # the slot is free from here on
            if finished:
                self.generations_finished += 1
            else:
                self.generations_aborted += 1
        await self._stop_producer(gen)

    @staticmethod
    async def _stop_producer(gen: _Generation) -> None:
        task = gen.producer
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait never raises the task's CancelledError, so a second
            # cancellation of *our* task still propagates.
            await asyncio.wait([task])

    async def _produce(self, gen: _Generation) -> None:
        req, opts, fault = gen.req, self.options, self.options.fault
        delay = opts.token_delay_ms / 1000
        limit = min(req.max_tokens, opts.ctx - gen.prompt_tokens)
        put = gen.queue.put_nowait
        pending, pending_tokens = "", 0
        reason: StopReason = "length"
        while True:
            n = gen.produced
            if opts.eos_after is not None and n >= opts.eos_after:
                reason = "eos"
                break
            if n >= limit:
                break
            if fault.kind == "reset_after" and n >= fault.after:
                put(WorkerReset(f"mock fault: reset after {n} tokens", engine=self.engine))
                return
            if fault.kind == "hang_after" and n >= fault.after:
                await asyncio.get_running_loop().create_future()  # until cancelled
            await asyncio.sleep(delay)
            gen.produced = n + 1
            self.generated_tokens_total += 1
            pending += token_text(req.seed, req.prompt, n)
            pending_tokens += 1
            hit = _find_stop(pending, req.stop)
            if hit is not None:
                pending = pending[:hit]
                reason = "stop"
                break
            # Hold back a suffix that may still grow into a stop string, as
            # llama-server does; the held tokens are counted in the next chunk.
            safe = len(pending) - _held_suffix(pending, req.stop)
            if safe > 0:
                put(TokenChunk(pending[:safe], pending_tokens))
                pending, pending_tokens = pending[safe:], 0
        if pending:
            put(TokenChunk(pending, max(pending_tokens, 1)))
        put(Finished(reason=reason, tokens_generated=gen.produced, prompt_tokens=gen.prompt_tokens))


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for s in stops if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def _held_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
