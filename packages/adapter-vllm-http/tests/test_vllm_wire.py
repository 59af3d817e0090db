"""Unit tests of the vllm-http stream decoder, error and metrics mapping (no engine)."""

from __future__ import annotations

import json

import pytest
from llama_orch.adapters.vllm_http import CompletionsStream, to_engine_metrics
from llama_orch.adapters.vllm_http._errors import error_from_response
from llama_orch.adapters.vllm_http._options import parse_options
from llama_orch.core.adapter_api import Finished, TokenChunk, TokenLogprob
from llama_orch.core.errors import InvalidParams, PoolUnready, WorkerReset
from llama_orch.core.prometheus import parse_prometheus


def ev(choice: dict | None = None, **extra: object) -> bytes:
    body: dict[str, object] = {"choices": [choice] if choice else [], **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def c(text: str, finish: str | None = None, **kw: object) -> dict:
    return {"index": 0, "text": text, "finish_reason": finish, **kw}


def test_vllm_wire_shape_token_ids_and_usage() -> None:
    """ORCH-4060: token_ids count tokens; usage gives totals; [DONE] ends; a chunk with
    several ids is one event with n_tokens = len(ids); an empty chunk's ids carry over."""
    s = CompletionsStream()
    body = (
        ev(c(" Paris", token_ids=[7042], stop_reason=None))
        + ev(c("", token_ids=[11]))
        + ev(c(", which is", token_ids=[30, 527, 314]))
        + ev(c("", "length", stop_reason=None, token_ids=[]))
        + ev(usage={"prompt_tokens": 5, "completion_tokens": 5})
        + b"data: [DONE]\n\n"
    )
    events = s.feed(body)
    assert events == [
        TokenChunk(" Paris", 1),
        TokenChunk(", which is", 4),
        Finished(reason="length", tokens_generated=5, prompt_tokens=5),
    ]


def test_logprobs_ride_on_the_chunk_with_their_text() -> None:
    """ORCH-9231: the legacy logprobs of each chunk become TokenChunk.logprobs, the
    alternatives cut to the N asked and sorted; an empty chunk's go with the next text."""
    s = CompletionsStream(top_logprobs=1)
    lp1 = {"tokens": [" Paris"], "token_logprobs": [-0.5],
           "top_logprobs": [{" Paris": -0.5, " Lyon": -2.0}]}  # fmt: skip
    lp2 = {"tokens": [","], "token_logprobs": [-0.1], "top_logprobs": [{",": -0.1}]}
    lp3 = {"tokens": [" which"], "token_logprobs": [-1.0],
           "top_logprobs": [{" that": -0.9, " which": -1.0}]}  # fmt: skip
    events = s.feed(
        ev(c(" Paris", token_ids=[1], logprobs=lp1))
        + ev(c("", token_ids=[2], logprobs=lp2))
        + ev(c(", which", "length", token_ids=[3], logprobs=lp3, stop_reason=None))
        + b"data: [DONE]\n\n"
    )
    top = [TokenLogprob(token=" Paris", logprob=-0.5)]
    assert events[0] == TokenChunk(
        " Paris", 1, [TokenLogprob(token=" Paris", logprob=-0.5, top=top)]
    )
    assert events[1] == TokenChunk(
        ", which", 2,
        [TokenLogprob(token=",", logprob=-0.1, top=[TokenLogprob(token=",", logprob=-0.1)]),
         TokenLogprob(token=" which", logprob=-1.0,
                      top=[TokenLogprob(token=" that", logprob=-0.9)])],
    )  # fmt: skip
    assert CompletionsStream().feed(ev(c("x", logprobs=lp1)))[0] == TokenChunk("x", 1)


@pytest.mark.parametrize(
    ("finish", "stop_reason", "asked_stop", "reason"),
    [
        ("stop", None, False, "eos"),  # vLLM: EOS
        ("stop", "3", True, "stop"),  # vLLM: matched stop string
        ("stop", 2, False, "stop"),  # vLLM: stop token id
        ("length", None, False, "length"),
        ("stop", "<absent>", True, "stop"),  # llama-server, request had stop strings
        ("stop", "<absent>", False, "eos"),  # llama-server, no stop strings
    ],
)
def test_finish_reason_mapping(
    finish: str, stop_reason: object, asked_stop: bool, reason: str
) -> None:
    """ORCH-4063."""
    choice = c("x", finish)
    if stop_reason != "<absent>":
        choice["stop_reason"] = stop_reason
    s = CompletionsStream(asked_stop=asked_stop)
    events = s.feed(ev(choice) + b"data: [DONE]\n\n")
    assert isinstance(events[-1], Finished) and events[-1].reason == reason


def test_abort_is_worker_reset() -> None:
    """ORCH-4063: finish_reason abort means the engine dropped the request."""
    s = CompletionsStream()
    assert s.feed(ev(c("a")) + ev(c("", "abort")) + b"data: [DONE]\n\n") == [TokenChunk("a", 1)]
    assert isinstance(s.failure, WorkerReset) and "abort" in s.failure.message


def test_error_then_done_is_a_failure_not_a_finish() -> None:
    """ORCH-4062: vLLM sends data: {"error":...} and then [DONE]; the text before is kept."""
    s = CompletionsStream()
    err = b'data: {"error":{"message":"boom","type":"InternalServerError","code":500}}\n\n'
    events = s.feed(ev(c("Hi")) + err + b"data: [DONE]\n\n")
    assert events == [TokenChunk("Hi", 1)]
    assert isinstance(s.failure, WorkerReset) and "boom" in s.failure.message
    assert s.finished is None


def test_done_without_finish_reason_and_cut_body_are_worker_reset() -> None:
    s = CompletionsStream()
    s.feed(ev(c("Hi")) + b"data: [DONE]\n\n")
    assert isinstance(s.failure, WorkerReset)
    s2 = CompletionsStream()
    s2.feed(ev(c("Hi")))
    with pytest.raises(WorkerReset):
        s2.end_of_body()


def test_llama_server_terminal_chunk_with_usage() -> None:
    """engines.md §5: llama-server ends with an extra empty chunk carrying usage."""
    s = CompletionsStream()
    body = (
        ev(c(","))
        + ev(c(" in"))
        + ev(c("", "length"), usage={"prompt_tokens": 4, "completion_tokens": 2})
    )
    events = s.feed(body + b"data: [DONE]\n\n")
    assert events[-1] == Finished(reason="length", tokens_generated=2, prompt_tokens=4)


def test_error_mapping() -> None:
    """ORCH-4062."""
    overflow = json.dumps(
        {"error": {"message": "This model's maximum context length is 512 tokens.", "code": 400}}
    ).encode()
    e = error_from_response(400, overflow, "POST /v1/completions")
    assert isinstance(e, InvalidParams) and "maximum context length" in e.message
    assert isinstance(error_from_response(503, b"", "x"), PoolUnready)
    assert isinstance(
        error_from_response(404, b'{"error":{"message":"no model"}}', "x"), WorkerReset
    )
    flat = error_from_response(400, b'{"object":"error","message":"old shape"}', "x")
    assert isinstance(flat, InvalidParams) and flat.message == "old shape"
    code_str = b'{"error":{"message":"too long","code":"context_length_exceeded"}}'
    assert error_from_response(400, code_str, "x").message == "too long"


def test_metrics_are_summed_over_labels() -> None:
    """ORCH-4065."""
    text = (
        "# HELP vllm:num_requests_running x\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 1.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 2.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 0.0\n'
        'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 7.0\n'
        'vllm:generation_tokens_total{engine="0",model_name="m"} 42.0\n'
        'vllm:prompt_tokens_total{engine="0",model_name="m"} 5.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
    )
    m = to_engine_metrics(parse_prometheus(text))
    assert (m.requests_running, m.requests_waiting) == (3.0, 0.0)
    assert (m.generated_tokens_total, m.prompt_tokens_total, m.kv_cache_usage_ratio) == (
        42.0,
        5.0,
        0.25,
    )


def test_options_are_checked() -> None:
    assert parse_options({"slots": 4, "unrelated": "x"}).slots == 4
    with pytest.raises(InvalidParams):
        parse_options({"slots": 0})
    with pytest.raises(InvalidParams):
        parse_options({"ctx": "big"})


def test_prefix_cache_counters_are_normalised() -> None:
    """ORCH-2322: vLLM's prefix-cache hits and queries (tokens), summed over labels."""
    text = (
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 100.0\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 64.0\n'
        'vllm:prefix_cache_hits_created{engine="0",model_name="m"} 1.7e9\n'
    )
    m = to_engine_metrics(parse_prometheus(text))
    assert (m.prefix_cache_hits_total, m.prefix_cache_queries_total) == (64.0, 100.0)
