"""Decode a Triton ``generate_stream`` SSE body into adapter events (pure, no I/O).

Wire facts (Triton 2.51, generate extension; see README):

* Each event is ``data: <json>`` holding every output tensor of one model
  response; one-element tensors are unwrapped to scalars. ``text_output`` is
  the delta text.
* There is **no end marker**: the body simply ends after the final response.
  So an end of body is a normal finish, and a connection that breaks instead
  is a :class:`WorkerReset`.
* A failure after the first response arrives as ``data: {"error": "..."}``
  under HTTP 200.
* Token counts and the finish reason exist only if the model sends the
  optional outputs ``num_output_tokens``, ``num_input_tokens`` and
  ``finish_reason`` (the vLLM backend has the last two on request). Without
  them a delta with text counts as one token, and the reason is ``length``
  when ``max_tokens`` tokens came, else ``eos``.
"""

from __future__ import annotations

from llama_orch.adapter_http import SSEStream
from llama_orch.core.adapter_api import AdapterEvent, Finished, StopReason, TokenChunk
from llama_orch.core.errors import WorkerReset

from ._errors import ENGINE, short_error
from ._wire import GenerateEvent, event_decoder

__all__ = ["FINISH_REASONS", "GenerateStream"]

# finish_reason output values -> Finished.reason (ours, vLLM's, TGI's spellings).
FINISH_REASONS: dict[str, StopReason] = {
    "eos": "eos",
    "eos_token": "eos",
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
}


class GenerateStream(SSEStream[GenerateEvent]):
    """Feed raw bytes; get :class:`TokenChunk` events; :meth:`end_of_body` gives
    the :class:`Finished`. A failure is kept in :attr:`failure` after the
    events that preceded it in the same read."""

    def __init__(self, max_tokens: int) -> None:
        super().__init__(event_decoder, ENGINE)
        self._max_tokens = max_tokens
        self._pending = 0
        self.counted = 0
        self.reason: StopReason | None = None

    @property
    def tokens_generated(self) -> int:
        return self.counted + self._pending

    def on_event(self, ev: GenerateEvent) -> list[AdapterEvent]:
        if ev.error is not None:
            raise WorkerReset(
                f"Triton error inside the stream: {short_error(ev.error)}", engine=ENGINE
            )
        if ev.num_input_tokens is not None:
            self.prompt_tokens = ev.num_input_tokens
        text = ev.text_output or ""
        n = ev.num_output_tokens if ev.num_output_tokens is not None else int(bool(text))
        out: list[AdapterEvent] = []
        if text:
            n_tokens = max(1, n + self._pending)
            self._pending = 0
            self.counted += n_tokens
            out.append(TokenChunk(text, n_tokens))
        else:
            self._pending += n
        if ev.finish_reason:
            self.reason = FINISH_REASONS.get(ev.finish_reason, "stop")
        return out

    def end_of_body(self) -> Finished:
        reason = self.reason
        if reason is None:
            reason = "length" if self.tokens_generated >= self._max_tokens else "eos"
        return Finished(
            reason=reason, tokens_generated=self.tokens_generated, prompt_tokens=self.prompt_tokens
        )
