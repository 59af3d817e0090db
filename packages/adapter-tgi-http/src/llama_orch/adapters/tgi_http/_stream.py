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

from llama_orch.adapter_http import SSEStream
from llama_orch.core.adapter_api import AdapterEvent, Finished, StopReason, TokenChunk

from ._errors import ENGINE, error_in_stream
from ._wire import StreamEvent, stream_event_decoder

__all__ = ["FINISH_REASONS", "GenerateStream"]

FINISH_REASONS: dict[str, StopReason] = {
    "eos_token": "eos",
    "stop_sequence": "stop",
    "length": "length",
}


class GenerateStream(SSEStream[StreamEvent]):
    """Feed raw response bytes; get :class:`TokenChunk` / :class:`Finished` events."""

    def __init__(self) -> None:
        super().__init__(stream_event_decoder, ENGINE)
        self.tokens_generated = 0
        self._uncounted = 0  # tokens (special ones) not yet attributed to a chunk

    def on_event(self, ev: StreamEvent) -> list[AdapterEvent]:
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
