"""Pure wire handling: SSE decoding, stop mapping, error mapping, metrics parsing.

These pin the traps of llama-server's native stream without any I/O
(ORCH-3005, ORCH-3007, ORCH-3009).
"""

from __future__ import annotations

import json

import pytest
from llama_orch.adapters.llamacpp_http import (
    CompletionStream,
    LlamaCppHttpAdapter,
)
from llama_orch.adapters.llamacpp_http._errors import error_from_response
from llama_orch.adapters.llamacpp_http._metrics import to_engine_metrics
from llama_orch.core.adapter_api import (
    AdapterEvent,
    AdapterTarget,
    Finished,
    TokenChunk,
    load_adapter_class,
)
from llama_orch.core.errors import InvalidParams, PoolUnready, WorkerReset
from llama_orch.core.prometheus import parse_prometheus


def test_entry_point_loads_llamacpp_adapter() -> None:
    """ORCH-3001: the adapter is found by its entry-point name."""
    assert load_adapter_class("llamacpp-http") is LlamaCppHttpAdapter


def test_bad_options_fail_loudly() -> None:
    with pytest.raises(InvalidParams):
        LlamaCppHttpAdapter(AdapterTarget(replica_id="r", options={"idle_timeout_s": "soon"}))
    with pytest.raises(InvalidParams):
        LlamaCppHttpAdapter(AdapterTarget(replica_id="r", options={"idle_timeout_s": 0}))


def _chunk(content: str, predicted: int, tokens: list[int] | None = None) -> bytes:
    toks = tokens if tokens is not None else [100 + predicted]
    return (
        b'data: {"index":0,"content":'
        + _json_str(content)
        + b',"tokens":'
        + str(toks).replace(" ", "").encode()
        + b',"stop":false,"id_slot":0,"tokens_predicted":'
        + str(predicted).encode()
        + b',"tokens_evaluated":5}\n\n'
    )


def _json_str(s: str) -> bytes:
    return json.dumps(s, ensure_ascii=False).encode()  # raw UTF-8 on the wire


def _final(stop_type: str, predicted: int) -> bytes:
    return (
        b'data: {"index":0,"content":"","tokens":[],"id_slot":0,"stop":true,"model":"m",'
        b'"tokens_predicted":'
        + str(predicted).encode()
        + b',"tokens_evaluated":5,"generation_settings":{"seed":1},"prompt":"p",'
        b'"has_new_line":false,"truncated":false,"stop_type":"'
        + stop_type.encode()
        + b'","stopping_word":"","tokens_cached":6,"timings":{"predicted_n":2}}\n\n'
    )


STREAM = (
    _chunk(" The", 1)
    + b": keep-alive comment\n\n"
    + _chunk("", 2)  # pending stop-string prefix: a token but no text
    + _chunk(" cat", 3)
    + b"data:"
    + _chunk(" été", 5)[5:]  # "data:" without space; raw UTF-8 of 2 tokens
    + _final("limit", 5)
)


def _feed_all(stream: CompletionStream, pieces: list[bytes]) -> list[AdapterEvent]:
    out: list[AdapterEvent] = []
    for p in pieces:
        out.extend(stream.feed(p))
    return out


@pytest.mark.parametrize("split", [None, 1, 7])
def test_stream_decodes_regardless_of_read_boundaries(split: int | None) -> None:
    """ORCH-3005: exact text, token counting across empty/multi-token chunks, no [DONE]."""
    pieces = (
        [STREAM] if split is None else [STREAM[i : i + split] for i in range(0, len(STREAM), split)]
    )
    events = _feed_all(CompletionStream(), pieces)
    chunks = [e for e in events if isinstance(e, TokenChunk)]
    assert [c.text for c in chunks] == [" The", " cat", " été"]
    assert [c.n_tokens for c in chunks] == [1, 2, 2]  # held tokens go to the next text
    # ORCH-2351: the final chunk's id_slot is reported
    assert events[-1] == Finished(
        reason="length", tokens_generated=5, prompt_tokens=5, engine_slot=0
    )
    assert sum(1 for e in events if isinstance(e, Finished)) == 1


@pytest.mark.parametrize(
    ("stop_type", "reason"), [("eos", "eos"), ("word", "stop"), ("limit", "length")]
)
def test_stop_type_mapping(stop_type: str, reason: str) -> None:
    events = CompletionStream().feed(_chunk(" a", 1) + _final(stop_type, 1))
    assert isinstance(events[-1], Finished) and events[-1].reason == reason


def test_stream_without_final_chunk_has_no_finished() -> None:
    """There is no [DONE]: only stop=true ends a stream; [DONE] is ignored."""
    s = CompletionStream()
    events = s.feed(_chunk(" a", 1) + b"data: [DONE]\n\n")
    assert events == [TokenChunk(" a", 1)]
    assert s.finished is None


def test_error_event_inside_stream_is_worker_reset() -> None:
    """ORCH-3007: data: {"error":...} mid-stream."""
    s = CompletionStream()
    events = s.feed(
        _chunk(" a", 1) + b'data: {"error":{"code":500,"message":"boom",'
        b'"type":"server_error"}}\n\n' + _chunk(" b", 2)
    )
    assert events == [TokenChunk(" a", 1)]  # text before the error is kept, none after
    assert isinstance(s.failure, WorkerReset) and "boom" in s.failure.message
    assert s.feed(_final("limit", 2)) == []


def test_garbage_event_is_worker_reset() -> None:
    s = CompletionStream()
    assert s.feed(b"data: {not json\n\n") == []
    assert isinstance(s.failure, WorkerReset)
    assert s.failure.__cause__ is not None


def test_http_error_mapping() -> None:
    """ORCH-3007: HTTP answers before the stream."""
    loading = b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
    overflow = (
        b'{"error":{"code":400,"message":"request (1101 tokens) exceeds the available '
        b'context size (1024 tokens), try increasing it","type":'
        b'"exceed_context_size_error","n_prompt_tokens":1101,"n_ctx":1024}}'
    )
    invalid = b'{"error":{"code":400,"message":"bad seed","type":"invalid_request_error"}}'
    server = b'{"error":{"code":500,"message":"oops","type":"server_error"}}'
    assert isinstance(error_from_response(503, loading, "x"), PoolUnready)
    err = error_from_response(400, overflow, "x")
    assert isinstance(err, InvalidParams) and err.message.startswith("request (1101 tokens)")
    assert isinstance(error_from_response(400, invalid, "x"), InvalidParams)
    assert isinstance(error_from_response(500, server, "x"), WorkerReset)
    assert isinstance(error_from_response(502, b"<html>bad gateway</html>", "x"), WorkerReset)


def test_prometheus_parsing_and_normalisation() -> None:
    """ORCH-3009."""
    text = (
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        "llamacpp:prompt_tokens_total 4\n"
        "llamacpp:tokens_predicted_total 6\n"
        "llamacpp:requests_processing 1\n"
        "llamacpp:requests_deferred 2\n"
        'llamacpp:labelled{slot="0",kind="a b"} 3.5 1700000000\n'
        "llamacpp:weird NaN\n"
        "\n"
    )
    samples = parse_prometheus(text)
    assert samples['llamacpp:labelled{slot="0",kind="a b"}'] == 3.5
    m = to_engine_metrics(samples)
    assert (m.prompt_tokens_total, m.generated_tokens_total) == (4, 6)
    assert (m.requests_running, m.requests_waiting) == (1, 2)
    assert m.kv_cache_usage_ratio is None  # gone from current builds
    assert to_engine_metrics({"llamacpp:kv_cache_usage_ratio": 0.25}).kv_cache_usage_ratio == 0.25


def test_prefix_cache_counters_are_normalised() -> None:
    """ORCH-2322: llama-server counts evaluated and cached prompt tokens apart;
    queries are their sum (values as a real build reported them)."""
    m = to_engine_metrics(
        {"llamacpp:prompt_tokens_total": 243.0, "llamacpp:prompt_tokens_cached_total": 242.0}
    )
    assert (m.prefix_cache_hits_total, m.prefix_cache_queries_total) == (242.0, 485.0)
    bare = to_engine_metrics({"llamacpp:prompt_tokens_total": 3.0})
    assert bare.prefix_cache_hits_total is None and bare.prefix_cache_queries_total is None
