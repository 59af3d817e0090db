"""The SSE decoding loop every streaming HTTP adapter shares (pure, no I/O).

A subclass maps one decoded JSON event to adapter events in
:meth:`SSEStream.on_event`; framing (comments, ``data:`` with or without a
space, CRLF, events split across reads) is :class:`~llama_orch.core.sse.SSEParser`'s
job. Text decoded before a failure in the same read is returned first and the
failure is kept in :attr:`SSEStream.failure`, to be raised once that text is
delivered; nothing is decoded after a failure or after the final event.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Generic, TypeVar

import msgspec
from llama_orch.core.adapter_api import AdapterEvent, Finished
from llama_orch.core.errors import OrchError, WorkerReset
from llama_orch.core.sse import SSEParser

__all__ = ["SSEStream"]

E = TypeVar("E")


class SSEStream(abc.ABC, Generic[E]):
    """A subclass also keeps ``tokens_generated`` (what a cancel reports)."""

    # What a body that ends early was missing (the message of end_of_body).
    final: ClassVar[str] = "final event"

    def __init__(self, decoder: msgspec.json.Decoder[E], engine: str) -> None:
        self._sse = SSEParser()
        self._decoder = decoder
        self.engine = engine
        self.prompt_tokens = 0
        self.finished: Finished | None = None
        self.failure: OrchError | None = None

    def feed(self, data: bytes) -> list[AdapterEvent]:
        events: list[AdapterEvent] = []
        for msg in self._sse.feed(data):
            if self.finished is not None or self.failure is not None:
                break
            try:
                if msg.data.strip() == "[DONE]":
                    events.extend(self.on_done())
                    continue
                try:
                    event = self._decoder.decode(msg.data)
                except msgspec.DecodeError as exc:
                    raise WorkerReset(
                        f"unparseable stream event from engine: {msg.data[:200]!r}",
                        engine=self.engine,
                    ) from exc
                events.extend(self.on_event(event))
            except OrchError as exc:
                self.failure = exc
        return events

    @abc.abstractmethod
    def on_event(self, event: E) -> list[AdapterEvent]:
        """Adapter events for one decoded ``data:`` payload; raise an OrchError to fail."""

    def on_done(self) -> list[AdapterEvent]:
        """``data: [DONE]`` (the OpenAI terminator): ignored unless the wire ends there."""
        return []

    def end_of_body(self) -> Finished:
        """The response body ended; a wire with an end event of its own was cut short."""
        raise WorkerReset(f"engine closed the stream before the {self.final}", engine=self.engine)
