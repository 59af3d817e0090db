"""Helpers of the conformance suite: stream collection, polling, named failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import pytest
from llama_orch.core.adapter_api import (
    AdapterEvent,
    Finished,
    GenerateRequest,
    TokenChunk,
    WorkerAdapter,
)

_STABLE_POLLS = 5  # health answers that must agree ("without flapping")
_POLL_S = 0.05


def _fail(behaviour: str, detail: str) -> None:
    pytest.fail(f"[{behaviour}] {detail}", pytrace=False)


@dataclass(frozen=True)
class StreamResult:
    chunks: list[TokenChunk]
    finished: Finished

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)


async def collect_stream(
    it: AsyncGenerator[AdapterEvent, None], *, behaviour: str = "stream shape"
) -> StreamResult:
    """Drain a ``generate`` iterator and check its shape (ORCH-3005)."""
    chunks: list[TokenChunk] = []
    finished: Finished | None = None
    async with aclosing(it):
        async for ev in it:
            if finished is not None:
                _fail(behaviour, f"an event followed Finished: {ev!r}")
            if isinstance(ev, Finished):
                finished = ev
            elif isinstance(ev, TokenChunk):
                if ev.n_tokens < 1:
                    _fail(behaviour, f"TokenChunk with n_tokens={ev.n_tokens} (must be >= 1)")
                chunks.append(ev)
            else:
                _fail(behaviour, f"generate yielded {type(ev).__name__}, not an adapter event")
    if finished is None:
        _fail(behaviour, "the stream ended without a Finished event")
    assert finished is not None
    return StreamResult(chunks, finished)


def _fields(req: GenerateRequest) -> dict[str, Any]:
    return {f: getattr(req, f) for f in req.__struct_fields__}


def _pick_stop(text: str) -> tuple[str, int]:
    """A 3-character stop string, preferably from the second half of ``text``,
    whose first occurrence is where it was taken and that is not whitespace."""
    half = max(1, len(text) // 2)
    for at in [*range(half, len(text) - 3), *range(1, half)]:
        cand = text[at : at + 3]
        if cand.strip() and text.find(cand) == at:
            return cand, at
    return "", 0


async def _ready(a: WorkerAdapter) -> bool:
    return (await a.health()).ready


async def _poll_until(
    cond: Callable[[], Awaitable[bool]],
    within: float,
    behaviour: str,
    detail: str | Callable[[], str],
) -> None:
    deadline = time.monotonic() + within
    while not await cond():
        if time.monotonic() > deadline:
            text = detail() if callable(detail) else detail
            _fail(behaviour, f"{text} (waited {within}s)")
        await asyncio.sleep(_POLL_S)  # polling: the engine offers no event
