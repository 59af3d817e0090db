"""W3C Trace Context through a task (ORCH-7043..ORCH-7045): a client's ``traceparent``
makes the task's trace a part of the client's, the engine gets the ``engine.request``
span as its parent, and the ``task ended`` line names the trace."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import web
from llama_orch.core.config import Config
from llama_orch.core.errors import ErrorCode
from llama_orch.testing.fake_http import FakeHTTPEngine, sse_response
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
SPANS = ["task", "admission", "queue", "dispatch", "engine.request", "stream.end"]


def _traced(run) -> InMemorySpanExporter:  # type: ignore[no-untyped-def]
    exporter = InMemorySpanExporter()
    run.orch.tracing.add_processor(SimpleSpanProcessor(exporter))
    return exporter


def _task_spans(exporter: InMemorySpanExporter, task_id: str) -> dict[str, object]:
    spans = [
        s
        for s in exporter.get_finished_spans()
        if s.attributes and s.attributes.get("llama_orch.task_id") == task_id
    ]
    by_name = {s.name: s for s in spans}
    assert sorted(by_name) == sorted(SPANS)
    return by_name


def _assert_continues_client_trace(by_name: dict[str, object]) -> None:
    root = by_name["task"]
    assert root.parent is not None and root.parent.is_remote  # type: ignore[attr-defined]
    assert format_span_id(root.parent.span_id) == PARENT_ID  # type: ignore[attr-defined]
    assert str(root.context.trace_state.to_header()) == TRACESTATE  # type: ignore[attr-defined]
    for span in by_name.values():
        assert format_trace_id(span.context.trace_id) == TRACE_ID  # type: ignore[attr-defined]


async def test_a_clients_traceparent_is_the_parent_of_the_task(start_orchestrator, mock_config):
    """ORCH-7043: OrchQueue v1, the 202 form and the one-request SSE form."""
    run = await start_orchestrator(mock_config(adapter_options={"eos_after": 3}))
    exporter = _traced(run)
    headers = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    async with run.http.post(
        run.url + "/v1/tasks", json={"prompt": "hi", "max_tokens": 4}, headers=headers
    ) as resp:
        assert resp.status == 202
        task_id = (await resp.json())["task_id"]
    await run.events(task_id)
    by_name = _task_spans(exporter, task_id)
    _assert_continues_client_trace(by_name)
    for name in SPANS[1:]:
        assert by_name[name].parent.span_id == by_name["task"].context.span_id
    assert run.orch.tasks.get(task_id).trace_id == TRACE_ID

    async with run.http.post(
        run.url + "/v1/tasks",
        json={"prompt": "hi", "max_tokens": 4},
        headers={**headers, "Accept": "text/event-stream"},
    ) as resp:
        assert resp.status == 200
        task_id = resp.headers["X-Task-Id"]  # ORCH-2710
        body = await resp.text()
    assert "event: end" in body
    _assert_continues_client_trace(_task_spans(exporter, task_id))


BAD = [
    pytest.param(f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01", id="short-trace-id"),
    pytest.param(f"00-{TRACE_ID}-{PARENT_ID}0-01", id="long-parent-id"),
    pytest.param(f"00-{'0' * 32}-{PARENT_ID}-01", id="zero-trace-id"),
    pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", id="zero-parent-id"),
    pytest.param(f"ff-{TRACE_ID}-{PARENT_ID}-01", id="version-ff"),
    pytest.param(f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", id="upper-case"),
    pytest.param("garbage", id="garbage"),
]


@pytest.mark.parametrize("traceparent", BAD)
async def test_an_invalid_traceparent_starts_a_new_trace(
    start_orchestrator, mock_config, traceparent
):
    """ORCH-7043: a new trace, as without the header; never an error answer."""
    run = await start_orchestrator(mock_config(adapter_options={"eos_after": 2}))
    exporter = _traced(run)
    async with run.http.post(
        run.url + "/v1/tasks",
        json={"prompt": "hi", "max_tokens": 3},
        headers={"traceparent": traceparent, "tracestate": TRACESTATE},
    ) as resp:
        assert resp.status == 202
        task_id = (await resp.json())["task_id"]
    events = await run.events(task_id)
    assert events[-1][1] == "end"
    by_name = _task_spans(exporter, task_id)
    root = by_name["task"]
    assert root.parent is None
    assert format_trace_id(root.context.trace_id) != TRACE_ID
    assert run.orch.tasks.get(task_id).trace_id == format_trace_id(root.context.trace_id)


async def test_an_unsampled_client_trace_is_not_recorded(start_orchestrator, mock_config):
    """ORCH-7043: the client's sampled flag is honoured (parent-based sampling): no
    span recorded, and no trace id in the log line (ORCH-7045)."""
    run = await start_orchestrator(mock_config(adapter_options={"eos_after": 2}))
    exporter = _traced(run)
    async with run.http.post(
        run.url + "/v1/tasks",
        json={"prompt": "hi", "max_tokens": 3},
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"},
    ) as resp:
        assert resp.status == 202
        task_id = (await resp.json())["task_id"]
    await run.events(task_id)
    assert not [
        s for s in exporter.get_finished_spans() if s.attributes["llama_orch.task_id"] == task_id
    ]
    assert run.orch.tasks.get(task_id).trace_id is None


# -- the engine's side: an HTTP engine (a small fake llama-server) ----------------


class FakeLlamaServer:
    """Just enough of llama-server for the llamacpp-http adapter; records the
    headers of every request by path."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def _json(self, request: web.Request, body: object) -> web.Response:
        self.seen.append((request.path, dict(request.headers)))
        return web.json_response(body)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def props(self, request: web.Request) -> web.Response:
        return await self._json(
            request,
            {
                "total_slots": 2,
                "default_generation_settings": {"n_ctx": 4096, "params": {}},
                "model_path": "/fake/fake.gguf",
                "model_alias": "fake",
                "build_info": "b0-fake",
            },
        )

    async def tokenize(self, request: web.Request) -> web.Response:
        content = (await request.json()).get("content", "")
        return await self._json(request, {"tokens": list(range(len(content.split()) + 1))})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text="# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 0\n",
            content_type="text/plain",
        )

    async def not_here(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text='{"error": {"code": 404, "message": "no"}}')

    async def embeddings(self, request: web.Request) -> web.Response:
        inputs = (await request.json()).get("input", [])
        if not inputs:  # the adapter's probe: served (ORCH-9211)
            return web.Response(status=400, text='{"error": {"code": 400, "message": "empty"}}')
        data = [{"index": i, "embedding": [1.0, 0.0]} for i in range(len(inputs))]
        return await self._json(request, {"data": data, "usage": {"prompt_tokens": 2}})

    async def completion(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, dict(request.headers)))
        n = (await request.json()).get("n_predict", 2)
        resp = await sse_response(request)
        for i in range(n):
            chunk = {"index": 0, "content": f" t{i}", "tokens": [i], "stop": False,
                     "id_slot": 0, "tokens_predicted": i + 1, "tokens_evaluated": 2}  # fmt: skip
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        final = {"index": 0, "content": "", "tokens": [], "stop": True, "stop_type": "limit",
                 "tokens_predicted": n, "tokens_evaluated": 2, "timings": {}}  # fmt: skip
        await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        return resp

    def completions(self, path: str = "/completion") -> list[dict[str, str]]:
        return [h for p, h in self.seen if p == path]


@pytest.fixture
async def llama() -> AsyncIterator[tuple[FakeLlamaServer, str]]:
    fake = FakeLlamaServer()
    routes = {
        "GET /health": fake.health,
        "GET /props": fake.props,
        "POST /tokenize": fake.tokenize,
        "GET /metrics": fake.metrics,
        "GET /slots": fake.not_here,
        "POST /v1/embeddings": fake.embeddings,
        "POST /completion": fake.completion,
    }
    async with FakeHTTPEngine(routes) as server:
        yield fake, server.base_url


def _llama_config(url: str) -> Config:
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 0.25},
        "auth": {"enabled": False},
        "pools": [{"id": "fake", "engine": "llamacpp-http", "model": "fake", "endpoints": [url]}],
    }
    return msgspec.convert(doc, Config)


async def _submit(run, headers: dict[str, str]) -> str:  # type: ignore[no-untyped-def]
    async with run.http.post(
        run.url + "/v1/tasks", json={"prompt": "hi there", "max_tokens": 3}, headers=headers
    ) as resp:
        assert resp.status == 202, await resp.text()
        task_id: str = (await resp.json())["task_id"]
    events = await run.events(task_id)
    assert events[-1][1] == "end", events
    return task_id


async def test_the_engine_request_carries_the_engine_request_span(start_orchestrator, llama):
    """ORCH-7044: the engine's traceparent: the client's trace, the task's
    ``engine.request`` span as parent, the tracestate with it."""
    fake, url = llama
    run = await start_orchestrator(_llama_config(url))
    exporter = _traced(run)
    fake.seen.clear()  # the startup self-tests' requests
    task_id = await _submit(run, {"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    by_name = _task_spans(exporter, task_id)
    _assert_continues_client_trace(by_name)
    [sent] = fake.completions()
    engine = by_name["engine.request"].context
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert parent_id == format_span_id(engine.span_id)
    assert sent["tracestate"] == TRACESTATE

    fake.seen.clear()  # a client without a trace: the task's own trace goes to the engine
    task_id = await _submit(run, {})
    by_name = _task_spans(exporter, task_id)
    [sent] = fake.completions()
    engine = by_name["engine.request"].context
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id) == ("00", format_trace_id(engine.trace_id))
    assert parent_id == format_span_id(engine.span_id)
    assert int(flags, 16) & 1  # sampled (the SDK may set the W3C level 2 random bit too)
    assert "tracestate" not in sent


async def test_tracing_off_reads_and_sends_no_trace_context(start_orchestrator, llama, monkeypatch):
    """ORCH-7043, ORCH-7044: the default: the headers are not read, no span, no trace
    id, no header to the engine."""
    from llama_orch.orchestratord import app

    def not_read(headers: object) -> None:
        raise AssertionError("trace headers read with tracing off")

    monkeypatch.setattr(app, "trace_carrier", not_read)
    fake, url = llama
    run = await start_orchestrator(_llama_config(url))
    assert not run.orch.tracing.enabled
    fake.seen.clear()  # the startup self-tests' requests (none traced either)
    task_id = await _submit(run, {"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    [sent] = fake.completions()
    assert "traceparent" not in sent and "tracestate" not in sent
    assert run.orch.tasks.get(task_id).trace_id is None
    assert all("traceparent" not in h for _, h in fake.seen)


# -- the log line (ORCH-7045) -------------------------------------------------------


async def test_the_task_ended_line_names_the_trace(start_orchestrator, mock_config, caplog):
    """ORCH-7045: ``trace_id`` on the ``task ended`` record (and so in its JSON line)
    when the task was traced; absent when not."""
    from llama_orch.orchestratord.main import JsonFormatter

    run = await start_orchestrator(mock_config(adapter_options={"eos_after": 2}))
    caplog.set_level(logging.INFO, logger="llama_orch.orchestratord")
    untraced = await _submit(run, {"traceparent": TRACEPARENT})
    exporter = _traced(run)
    traced = await _submit(run, {"traceparent": TRACEPARENT})
    assert _task_spans(exporter, traced)
    ended = {r.__dict__["job_id"]: r for r in caplog.records if r.getMessage() == "task ended"}
    line = json.loads(JsonFormatter().format(ended[traced]))
    assert line["trace_id"] == TRACE_ID
    assert "trace_id" not in json.loads(JsonFormatter().format(ended[untraced]))


async def test_facade_embeddings_pass_the_clients_trace_context_on(start_orchestrator, llama):
    """ORCH-7047: no task, no span: the engine continues the client's trace; an
    invalid header is not passed on; tracing off, nothing is."""
    # the route is the OpenAI facade's, another distribution: this runs in the workspace
    # suite, and not in orchestratord's standalone venv (ORCH-4016), which lacks it
    pytest.importorskip("llama_orch.frontends.openai")
    fake, url = llama
    run = await start_orchestrator(_llama_config(url))

    async def embed(headers: dict[str, str]) -> dict[str, str]:
        fake.seen.clear()
        async with run.http.post(
            run.url + "/v1/embeddings", json={"model": "fake", "input": ["a b"]}, headers=headers
        ) as resp:
            assert resp.status == 200, await resp.text()
        [sent] = fake.completions("/v1/embeddings")
        return sent

    traced = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    sent = await embed(traced)  # tracing off
    assert "traceparent" not in sent and "tracestate" not in sent
    _traced(run)
    sent = await embed(traced)
    assert (sent["traceparent"], sent["tracestate"]) == (TRACEPARENT, TRACESTATE)
    sent = await embed({"traceparent": f"ff-{TRACE_ID}-{PARENT_ID}-01", "tracestate": TRACESTATE})
    assert "traceparent" not in sent and "tracestate" not in sent


# -- with a state store (ORCH-7046) ------------------------------------------------


async def test_the_clients_trace_context_is_stored_with_the_task(start_orchestrator, mock_config):
    """ORCH-7046: what the store keeps of a task carries the submission's context."""
    from llama_orch.orchestratord.stored_task import StoredTask

    doc = msgspec.to_builtins(mock_config(adapter_options={"eos_after": 2}))
    doc["state"] = {"backend": "memory"}
    run = await start_orchestrator(msgspec.convert(doc, Config))
    _traced(run)
    task_id = await _submit(run, {"traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    view = await run.orch.state.store.task(task_id)
    stored = msgspec.json.decode(view.task.request, type=StoredTask)
    assert stored.trace == {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}


def test_a_task_admitted_elsewhere_continues_the_clients_trace_where_it_runs():
    """ORCH-7046: the instance that runs a task another admitted (its record made from
    the store's spec) opens the task's spans in the client's trace, and the engine
    request names its ``engine.request`` span; without a stored context, no spans."""
    from llama_orch.orchestratord.stored_task import record_of, spec_of
    from llama_orch.orchestratord.tracing import Tracing

    from .conftest import bare_record

    tracing = Tracing()
    exporter = InMemorySpanExporter()
    tracing.add_processor(SimpleSpanProcessor(exporter))
    admitted = bare_record()
    admitted.trace_carrier = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
    here = record_of(spec_of(admitted))  # as the other instance reads it
    assert here.trace_carrier == admitted.trace_carrier
    tracing.dispatched(here, "r0", "v1")
    headers = tracing.engine_headers(here)
    here.fail(ErrorCode.INTERNAL, "test", retriable=False)
    tracing.ended(here)
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(by_name) == ["dispatch", "engine.request", "stream.end", "task"]
    root = by_name["task"]
    assert format_span_id(root.parent.span_id) == PARENT_ID
    assert {format_trace_id(s.context.trace_id) for s in by_name.values()} == {TRACE_ID}
    engine = by_name["engine.request"].context
    assert headers is not None
    assert headers["traceparent"] == f"00-{TRACE_ID}-{format_span_id(engine.span_id)}-01"
    assert headers["tracestate"] == TRACESTATE
    assert here.trace_id == TRACE_ID

    exporter.clear()
    plain = record_of(spec_of(bare_record()))  # admitted without a trace context
    tracing.dispatched(plain, "r0", "v1")
    assert tracing.engine_headers(plain) is None
    assert not exporter.get_finished_spans()
