"""Unit tests of the triton stream decoder, error and metrics mapping (no engine)."""

from __future__ import annotations

import json

import pytest
from llama_orch.adapters.triton import (
    GenerateStream,
    TritonAdapter,
    to_engine_metrics,
)
from llama_orch.adapters.triton._errors import error_from_response
from llama_orch.core.adapter_api import AdapterTarget, Finished, TokenChunk
from llama_orch.core.errors import InvalidParams, PoolUnready, WorkerReset
from llama_orch.core.prometheus import parse_prometheus


def ev(**fields: object) -> bytes:
    return (
        b"data: "
        + json.dumps({"model_name": "m", "model_version": "1", **fields}).encode()
        + b"\n\n"
    )


def test_deltas_counts_and_finish_from_optional_outputs() -> None:
    """ORCH-4070: text_output deltas, num_output_tokens, num_input_tokens, finish_reason."""
    s = GenerateStream(max_tokens=10)
    events = s.feed(
        ev(text_output="Hel", num_output_tokens=1, num_input_tokens=4, finish_reason="")
        + ev(text_output="", num_output_tokens=1, num_input_tokens=4, finish_reason="")
        + ev(text_output="lo", num_output_tokens=1, num_input_tokens=4, finish_reason="")
        + ev(text_output="", num_output_tokens=0, num_input_tokens=4, finish_reason="eos")
    )
    assert events == [TokenChunk("Hel", 1), TokenChunk("lo", 2)]
    assert s.end_of_body() == Finished(reason="eos", tokens_generated=3, prompt_tokens=4)


@pytest.mark.parametrize(("n", "reason"), [(3, "length"), (2, "eos")])
def test_without_optional_outputs_reason_is_inferred(n: int, reason: str) -> None:
    """A model with only text_output: one token per delta, length iff max_tokens came."""
    s = GenerateStream(max_tokens=3)
    s.feed(b"".join(ev(text_output=f"t{i}") for i in range(n)))
    assert s.end_of_body() == Finished(reason=reason, tokens_generated=n, prompt_tokens=0)


def test_error_event_is_worker_reset_with_the_last_traceback_line() -> None:
    s = GenerateStream(max_tokens=5)
    tb = "Traceback (most recent call last):\n  File x\nRuntimeError: engine died\n"
    assert s.feed(
        ev(text_output="a") + b"data: " + json.dumps({"error": tb}).encode() + b"\n\n"
    ) == [TokenChunk("a", 1)]
    assert isinstance(s.failure, WorkerReset)
    assert s.failure.message.endswith("RuntimeError: engine died")


def test_error_mapping() -> None:
    """ORCH-4071: 'not ready' 400 -> PoolUnready; other 400 -> InvalidParams (with the
    model's message, also when Triton frames it as an SSE event); 404 -> WorkerReset."""
    not_ready = b'{"error":"Request for unknown model: \'m\' version 1 is not at ready state"}'
    assert isinstance(error_from_response(400, not_ready, "x"), PoolUnready)
    sse = (
        b'data: {"error":"Traceback ...\\nRuntimeError: engine HTTP 400: '
        b'exceeds the available context size"}\n\n'
    )
    e = error_from_response(400, sse, "x")
    assert isinstance(e, InvalidParams) and "context size" in e.message
    assert isinstance(error_from_response(404, b'{"error":"unknown model"}', "x"), WorkerReset)
    assert isinstance(error_from_response(503, b"", "x"), PoolUnready)


def test_metrics_pick_the_model() -> None:
    """ORCH-4073."""
    text = (
        'nv_inference_pending_request_count{model="a",version="1"} 2\n'
        'nv_inference_pending_request_count{model="b",version="1"} 5\n'
        'nv_inference_request_success{model="a",version="1"} 9\n'
    )
    m = to_engine_metrics(parse_prometheus(text), "a")
    assert m.requests_waiting == 2.0 and m.requests_running is None
    assert (
        m.generated_tokens_total is None
        and m.raw['nv_inference_request_success{model="a",version="1"}'] == 9
    )


def test_options_require_model_and_ctx() -> None:
    with pytest.raises(InvalidParams):
        TritonAdapter(
            AdapterTarget(replica_id="r", base_url="http://127.0.0.1:1", options={"ctx": 5})
        )
    with pytest.raises(InvalidParams):
        TritonAdapter(
            AdapterTarget(replica_id="r", base_url="http://127.0.0.1:1", options={"model": "m"})
        )
    a = TritonAdapter(
        AdapterTarget(
            replica_id="r", base_url="http://10.0.0.1:8000", options={"model": "m", "ctx": 8}
        )
    )
    assert a._metrics_url == "http://10.0.0.1:8002/metrics"
