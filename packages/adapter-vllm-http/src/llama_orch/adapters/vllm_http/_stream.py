"""Decode an OpenAI completions SSE stream into adapter events (pure, no I/O).

Wire facts this relies on (vLLM 0.32 CPU and llama-server's ``/v1``; see README):

* Each event is ``data: <json>``; SSE framing (comments, optional space,
  events split across reads) is :class:`llama_orch.core.sse.SSEParser`'s job.
* ``choices[0].text`` is a delta; one chunk may carry several tokens and
  chunks with empty text occur, so tokens are never counted by chunks:
  vLLM's ``token_ids`` (asked with ``return_token_ids``) give the exact count
  per chunk; without them a chunk with text counts as one token, and the
  ``usage`` chunk (``stream_options.include_usage``) fixes the total.
* ``finish_reason`` rides on the last delta (vLLM) or an extra empty chunk
  (llama-server); ``usage`` comes in a chunk of its own or on that extra
  chunk; ``data: [DONE]`` ends a successful stream.
* ``data: {"error": ...}`` is a failure **even if ``[DONE]`` follows** (vLLM
  sends both); nothing is decoded after it.
"""

from __future__ import annotations

import msgspec
from llama_orch.adapter_http import SSEStream
from llama_orch.core.adapter_api import (
    AdapterEvent,
    Finished,
    StopReason,
    TokenChunk,
    TokenLogprob,
)
from llama_orch.core.errors import WorkerReset

from ._errors import ENGINE, error_message
from ._wire import Choice, ChoiceLogprobs, StreamChunk, stream_chunk_decoder

__all__ = ["CompletionsStream", "finish_reason"]


def finish_reason(choice: Choice, asked_stop: bool) -> StopReason:
    """Map an OpenAI ``finish_reason`` (+ vLLM ``stop_reason``) to ``Finished.reason``."""
    reason = choice.finish_reason
    if reason == "length":
        return "length"
    if reason == "stop":
        if choice.stop_reason is msgspec.UNSET:
            # llama-server: no stop_reason at all. Only a request with stop
            # strings can have stopped on one; EOS is then indistinguishable.
            return "stop" if asked_stop else "eos"
        return "eos" if choice.stop_reason is None else "stop"
    if reason == "abort":
        raise WorkerReset("engine aborted the request (finish_reason=abort)", engine=ENGINE)
    # Newer vLLM defines more reasons (e.g. "repetition"): the model stopped itself.
    return "stop"


class CompletionsStream(SSEStream[StreamChunk]):
    """Feed raw bytes; get :class:`TokenChunk` events, then one :class:`Finished`."""

    def __init__(self, *, asked_stop: bool = False, top_logprobs: int | None = None) -> None:
        super().__init__(stream_chunk_decoder, ENGINE)
        self._asked_stop = asked_stop
        # ORCH-9231: alternatives kept per token (None: not asked); logprobs of
        # chunks without text go with the next text, like their tokens
        self._top = top_logprobs
        self._probs: list[TokenLogprob] = []
        self._reason: StopReason | None = None
        self._pending = 0  # tokens of empty-text chunks, attributed to the next text
        self.counted = 0  # tokens attributed to yielded chunks
        self.usage_completion: int | None = None

    @property
    def tokens_generated(self) -> int:
        if self.usage_completion is not None:
            return self.usage_completion
        return self.counted + self._pending

    def _logprobs(self, lp: ChoiceLogprobs) -> None:
        top = self._top or 0
        for i, token in enumerate(lp.tokens):
            chosen = lp.token_logprobs[i] if i < len(lp.token_logprobs) else None
            alts = (lp.top_logprobs[i] if i < len(lp.top_logprobs) else None) or {}
            best = sorted(alts.items(), key=lambda kv: -kv[1])[:top]
            self._probs.append(
                TokenLogprob(
                    token=token,
                    logprob=chosen if chosen is not None else alts.get(token, 0.0),
                    top=[TokenLogprob(token=t, logprob=v) for t, v in best],
                )
            )

    def on_done(self) -> list[AdapterEvent]:
        return [self._finish("[DONE]")]

    def end_of_body(self) -> Finished:
        """The body ended without ``[DONE]``: fine only after a finish_reason."""
        return self._finish("end of body")

    def _finish(self, how: str) -> Finished:
        if self._reason is None:
            raise WorkerReset(f"stream ended ({how}) before any finish_reason", engine=ENGINE)
        self.finished = Finished(
            reason=self._reason,
            tokens_generated=self.tokens_generated,
            prompt_tokens=self.prompt_tokens,
        )
        return self.finished

    def on_event(self, chunk: StreamChunk) -> list[AdapterEvent]:
        if chunk.error is not None:
            raise WorkerReset(
                f"engine error inside the stream: {error_message(chunk.error, 'unknown error')}",
                engine=ENGINE,
            )
        if chunk.usage is not None:
            self.prompt_tokens = chunk.usage.prompt_tokens
            self.usage_completion = chunk.usage.completion_tokens
        out: list[AdapterEvent] = []
        for choice in chunk.choices:
            if choice.index != 0:
                raise WorkerReset(f"unexpected choice index {choice.index} (n=1)", engine=ENGINE)
            n = len(choice.token_ids) if choice.token_ids is not None else int(bool(choice.text))
            if self._top is not None and choice.logprobs is not None:
                self._logprobs(choice.logprobs)
            if choice.text:
                n_tokens = max(1, n + self._pending)
                self._pending = 0
                self.counted += n_tokens
                probs = None
                if self._top is not None:
                    probs, self._probs = self._probs, []
                out.append(TokenChunk(choice.text, n_tokens, probs))
            else:
                self._pending += n
            if choice.finish_reason is not None:
                self._reason = finish_reason(choice, self._asked_stop)
        return out
