"""Decode a ``POST /generate_stream`` SSE stream into adapter events (pure, no I/O).

Wire facts (TGI docs and router source, see README):

* One event per token: ``data:{"index":n,"token":{"id","text","special"},
  "generated_text":null,"details":null}``. TGI writes ``data:`` without a
  space and sends keep-alive comments; :class:`llama_orch.core.sse.SSEParser`
  handles both and events split across reads.
* The final event is itself a token event, the one whose ``generated_text``
  is not null; with ``details: true`` it carries ``finish_reason``
  (``length``, ``eos_token``, ``stop_sequence``), ``generated_tokens`` and
  ``input_length``. There is no ``[DONE]``.
* Special tokens (the eos token) carry text that ``generated_text`` leaves
  out: their text is dropped and the token is counted into the next chunk
  (or only into ``Finished`` when it is the last one).
* Errors arrive as ``data:{"error":...,"error_type":...}`` under HTTP 200.
"""

from __future__ import annotations

import msgspec
from llama_orch.core.adapter_api import AdapterEvent, Finished, TokenChunk
from llama_orch.core.errors import OrchError, WorkerReset
from llama_orch.core.sse import SSEParser

from ._errors import ENGINE, error_in_stream
from ._wire import StreamEvent, stream_event_decoder

__all__ = ["FINISH_REASONS", "GenerateStream"]

FINISH_REASONS: dict[str, str] = {"eos_token": "eos", "stop_sequence": "stop", "length": "length"}


class GenerateStream:
    """Feed raw response bytes; get :class:`TokenChunk` / :class:`Finished` events.

    As in the llama.cpp adapter, text decoded before a failure in the same
    read is returned first and the failure is kept in :attr:`failure`.
    """

    def __init__(self) -> None:
        self._sse = SSEParser()
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self._uncounted = 0  # tokens (special ones) not yet attributed to a chunk
        self.finished: Finished | None = None
        self.failure: OrchError | None = None

    def feed(self, data: bytes) -> list[AdapterEvent]:
        events: list[AdapterEvent] = []
        for msg in self._sse.feed(data):
            if self.finished is not None or self.failure is not None:
                break
            if msg.data.strip() == "[DONE]":
                continue
            try:
                try:
                    ev = stream_event_decoder.decode(msg.data)
                except msgspec.DecodeError as exc:
                    raise WorkerReset(
                        f"unparseable stream event from engine: {msg.data[:200]!r}",
                        engine=ENGINE,
                    ) from exc
                events.extend(self._on_event(ev))
            except OrchError as exc:
                self.failure = exc
        return events

    def _on_event(self, ev: StreamEvent) -> list[AdapterEvent]:
        if ev.error is not None:
            raise error_in_stream(ev.error, ev.error_type, tokens_seen=self.tokens_generated)
        out: list[AdapterEvent] = []
        if ev.token is not None:
            self.tokens_generated += 1
            self._uncounted += 1
            if ev.token.text and not ev.token.special:
                out.append(TokenChunk(ev.token.text, self._uncounted))
                self._uncounted = 0
        if ev.generated_text is not None:
            d = ev.details
            if d is not None and d.generated_tokens is not None:
                self.tokens_generated = d.generated_tokens
            if d is not None and d.input_length is not None:
                self.prompt_tokens = d.input_length
            reason = FINISH_REASONS.get(d.finish_reason if d else "", "length")
            self.finished = Finished(
                reason=reason,
                tokens_generated=self.tokens_generated,
                prompt_tokens=self.prompt_tokens,
            )
            out.append(self.finished)
        return out
