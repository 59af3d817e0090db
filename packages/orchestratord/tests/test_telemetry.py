"""Logs, traces, GPU probing, engine scrapes.

ORCH-7003..7005, ORCH-7030..7032, ORCH-7040..7042.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import msgspec
import pytest
from llama_orch.adapters.llamacpp_http._metrics import kv_usage_from_slots
from llama_orch.core.config import Config
from llama_orch.orchestratord.main import JsonFormatter
from llama_orch.orchestratord.telemetry import TASK_LOG_FIELDS, Gpu, safe_url
from llama_orch.orchestratord.tracing import CorrelationFilter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def _json_lines(caplog: pytest.LogCaptureFixture, msg: str) -> list[dict]:
    fmt, flt = JsonFormatter(), CorrelationFilter()
    out = []
    for rec in caplog.records:
        if rec.getMessage() == msg:
            flt.filter(rec)
            out.append(json.loads(fmt.format(rec)))
    return out


async def test_task_end_log_carries_every_field(
    start_orchestrator, mock_config, tenant_keys, caplog
):
    """ORCH-7030, ORCH-7031: one ``task ended`` JSON line per task, with every field;
    the tenant is the one of the API key (ORCH-8004)."""
    caplog.set_level(logging.INFO, logger="llama_orch.orchestratord")
    auth, keys = tenant_keys("acme")
    run = await start_orchestrator(mock_config(auth=auth, adapter_options={"eos_after": 5}))
    sid = str(uuid.uuid4())
    async with run.http.post(
        run.url + "/v1/tasks",
        json={"prompt": "hi", "max_tokens": 8, "session_id": sid},
        headers={"X-Correlation-Id": "corr-log-1", "Authorization": f"Bearer {keys['acme']}"},
    ) as resp:
        assert resp.status == 202, await resp.text()
        task_id = (await resp.json())["task_id"]
    events = await run.events(task_id, key=keys["acme"])
    assert events[-1][1] == "end"
    lines = [x for x in _json_lines(caplog, "task ended") if x["job_id"] == task_id]
    assert len(lines) == 1
    line = lines[0]
    assert set(TASK_LOG_FIELDS) <= set(line)
    assert line["correlation_id"] == "corr-log-1"
    assert line["session_id"] == sid and line["tenant"] == "acme"
    assert line["engine"] == "mock" and line["engine_version"] == "mock-1"
    assert line["pool_id"] == "mock" and line["replica_id"] == "mock-e0"
    assert line["model_id"] == "mock-model" and line["ctx"] == 2048
    assert line["kv_warmth"] is False and line["state"] == "completed"
    assert line["tokens_out"] == 5 and line["tokens_in"] == events[-1][2]["tokens_in"]
    assert line["queue_position"] == 0 and isinstance(line["predicted_start_ms"], int)
    assert line["queue_time_ms"] >= 0 and line["decode_time_ms"] >= 0


async def test_task_canceled_in_queue_is_logged_once(start_orchestrator, mock_config, caplog):
    """ORCH-7030: a task that never reached a replica is logged with null replica fields."""
    caplog.set_level(logging.INFO, logger="llama_orch.orchestratord")
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 50}))
    first = await run.submit(max_tokens=50)
    queued_id = str(uuid.uuid4())
    queued = await run.submit(task_id=queued_id, max_tokens=5)
    assert first.status == queued.status == 202
    async with run.http.post(f"{run.url}/v1/tasks/{queued_id}/cancel") as resp:
        assert resp.status == 204
    lines = [x for x in _json_lines(caplog, "task ended") if x["job_id"] == queued_id]
    assert len(lines) == 1
    assert lines[0]["state"] == "canceled" and lines[0]["replica_id"] is None
    assert lines[0]["engine_version"] is None and lines[0]["tokens_out"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_no_secret_reaches_a_log_line(tmp_path: Path):
    """ORCH-7032: Authorization / API-key header values and a credential in the config
    (an endpoint URL's user-info) never appear in orchestratord's log (DEBUG level)."""
    secrets = {
        "bearer": "sk-live-" + uuid.uuid4().hex,
        "api_key": "key-" + uuid.uuid4().hex,
        "config": "pw" + uuid.uuid4().hex,
        "prompt": "prompt-" + uuid.uuid4().hex,
    }
    port = _free_port()
    cfg = {
        "server": {"port": port, "shutdown_grace_s": 1.0},
        "auth": {"enabled": False},
        "pools": [
            {
                "id": "main",
                "engine": "mock",
                "model": "mock-model",
                "endpoints": [f"mock://ops:{secrets['config']}@0"],
                "adapter_options": {"eos_after": 3},
            }
        ],
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    log = open(tmp_path / "stderr.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_orch.orchestratord.main",
            "--config",
            str(tmp_path / "cfg.json"),
            "--log-level",
            "DEBUG",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {
        "Authorization": f"Bearer {secrets['bearer']}",
        "X-API-Key": secrets["api_key"],
        "X-Correlation-Id": "corr-secret-1",
    }
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + "/v1/pools/main/health") as r:
                        if r.status == 200 and (await r.json())["ready"]:
                            break
                await asyncio.sleep(0.05)
            async with http.post(
                url + "/v1/tasks", json={"prompt": secrets["prompt"], "max_tokens": 4}
            ) as r:
                assert r.status == 202
                task_id = (await r.json())["task_id"]
            async with http.get(f"{url}/v1/tasks/{task_id}/stream") as r:
                await r.read()
            async with http.post(
                url + "/v1/tasks", data=b"{not json " + secrets["api_key"].encode()
            ) as r:
                assert r.status == 400  # an error path that logs
            async with http.get(url + "/v1/nope") as r:
                assert r.status == 404
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
    text = (tmp_path / "stderr.log").read_text()
    lines = [json.loads(x) for x in text.splitlines() if x.strip()]  # every line is JSON
    assert any(x["msg"] == "task ended" and x["correlation_id"] == "corr-secret-1" for x in lines)
    assert any(x["msg"].startswith("endpoint replica main-e0 ready at mock://0") for x in lines)
    for name, value in secrets.items():
        assert value not in text, f"{name} secret leaked into the log"


def test_safe_url_drops_user_info():
    assert safe_url("http://u:p@host:1/x@y") == "http://host:1/x@y"
    assert safe_url("mock://0") == "mock://0"
    assert safe_url("no-scheme") == "no-scheme"


# -- traces ---------------------------------------------------------------------


async def test_task_trace_spans_and_correlation(start_orchestrator, mock_config):
    """ORCH-7040, ORCH-7041: admission → queue → dispatch → engine.request → stream.end."""
    run = await start_orchestrator(mock_config(adapter_options={"eos_after": 3}))
    exporter = InMemorySpanExporter()
    run.orch.tracing.add_processor(SimpleSpanProcessor(exporter))
    async with run.http.post(
        run.url + "/v1/tasks",
        json={"prompt": "hi", "max_tokens": 4},
        headers={"X-Correlation-Id": "corr-trace-1"},
    ) as resp:
        task_id = (await resp.json())["task_id"]
    await run.events(task_id)
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert sorted(by_name) == sorted(
        ["task", "admission", "queue", "dispatch", "engine.request", "stream.end"]
    )
    root = by_name["task"]
    assert root.parent is None
    for name in ("admission", "queue", "dispatch", "engine.request", "stream.end"):
        span = by_name[name]
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert span.attributes["llama_orch.task_id"] == task_id
        assert span.attributes["llama_orch.correlation_id"] == "corr-trace-1"
    order = ["admission", "queue", "dispatch", "engine.request", "stream.end"]
    starts = [by_name[n].start_time for n in order]
    assert starts == sorted(starts)
    assert by_name["queue"].end_time <= by_name["engine.request"].start_time
    assert by_name["engine.request"].end_time <= by_name["stream.end"].end_time
    assert by_name["stream.end"].attributes["llama_orch.state"] == "completed"
    assert by_name["engine.request"].attributes["llama_orch.replica_id"] == "mock-e0"


async def test_failed_engine_request_span_has_error_status(start_orchestrator, mock_config):
    """ORCH-7040: a task whose engine failed ends its spans with an error status."""
    run = await start_orchestrator(mock_config(adapter_options={"fail": "reset_after:1"}))
    exporter = InMemorySpanExporter()
    run.orch.tracing.add_processor(SimpleSpanProcessor(exporter))
    resp = await run.submit(max_tokens=4)
    task_id = (await resp.json())["task_id"]
    events = await run.events(task_id)
    assert events[-1][1] == "error"
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert not by_name["engine.request"].status.is_ok
    assert not by_name["task"].status.is_ok


def test_otlp_export_is_off_by_default():
    """ORCH-7042: no endpoint configured, nothing exported."""
    cfg = msgspec.convert({}, Config)
    assert cfg.observability.otlp_traces_endpoint is None


# -- GPU (no GPU on this machine) and engine scrapes ----------------------------


def test_gpu_absent_without_nvml_library(monkeypatch):
    """ORCH-7005: no nvidia-ml-py → no GPU series, no error."""
    import importlib

    real = importlib.import_module

    def no_pynvml(name, *a, **kw):
        if name == "pynvml":
            raise ImportError("no pynvml")
        return real(name, *a, **kw)

    monkeypatch.setattr(importlib, "import_module", no_pynvml)
    gpu = Gpu()
    assert gpu.available is False
    assert gpu.read([]) == ([], [])


def test_gpu_absent_when_nvml_finds_no_driver():
    """ORCH-7005: NVML present but no driver (this machine's case) → absent."""

    class NoDriver:
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    gpu = Gpu(NoDriver())
    assert gpu.available is False


def test_gpu_samples_per_device_of_ready_replicas():
    """ORCH-7005: with a device, one utilization and one VRAM sample per mask device."""
    calls = []

    class FakeNvml:
        def nvmlInit(self):
            calls.append("init")

        def nvmlDeviceGetCount(self):
            return 2

        def nvmlDeviceGetHandleByIndex(self, i):
            return i

        def nvmlDeviceGetUtilizationRates(self, h):
            return SimpleNamespace(gpu=40 + h)

        def nvmlDeviceGetMemoryInfo(self, h):
            return SimpleNamespace(used=1000 * (h + 1))

        def nvmlShutdown(self):
            calls.append("shutdown")

    state = SimpleNamespace(engine="vllm-http", engine_version="v1", pool_id="g", replica_id="g-0")
    pool = SimpleNamespace(
        config=SimpleNamespace(devices="0,1"),
        ready_replicas=lambda: [SimpleNamespace(state=state)],
    )
    gpu = Gpu(FakeNvml())
    assert gpu.available
    util, vram = gpu.read([pool])
    base = {"engine": "vllm-http", "engine_version": "v1", "pool_id": "g", "replica_id": "g-0"}
    assert util == [(0.40, base | {"device": "0"}), (0.41, base | {"device": "1"})]
    assert vram == [(1000.0, base | {"device": "0"}), (2000.0, base | {"device": "1"})]
    gpu.close()
    assert calls == ["init", "shutdown"]


def test_kv_usage_from_llama_server_slots():
    """ORCH-7003: processing slots' prompt + decoded tokens over the total context."""
    slots = [
        {"id": 0, "n_ctx": 512, "is_processing": True, "n_prompt_tokens": 100,
         "next_token": [{"has_next_token": True, "n_decoded": 28}]},
        {"id": 1, "n_ctx": 512, "is_processing": False, "n_prompt_tokens": 300,
         "next_token": [{"n_decoded": 5}]},
    ]  # fmt: skip
    assert kv_usage_from_slots(json.dumps(slots).encode()) == pytest.approx(128 / 1024)
    assert kv_usage_from_slots(b"[]") is None
    assert kv_usage_from_slots(b'{"error": 1}') is None


async def test_otlp_export_reaches_a_collector(start_orchestrator, mock_config):
    """ORCH-7042: with ``otlp_traces_endpoint`` set, spans are POSTed as OTLP/HTTP protobuf."""
    import http.server
    import threading

    bodies: list[tuple[str, str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            bodies.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = mock_config(adapter_options={"eos_after": 2})
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        cfg = msgspec.structs.replace(
            cfg,
            observability=msgspec.structs.replace(cfg.observability, otlp_traces_endpoint=endpoint),
        )
        run = await start_orchestrator(cfg)
        async with run.http.post(
            run.url + "/v1/tasks",
            json={"prompt": "hi", "max_tokens": 3},
            headers={"X-Correlation-Id": "corr-otlp-1"},
        ) as resp:
            task_id = (await resp.json())["task_id"]
        await run.events(task_id)
        assert await asyncio.to_thread(run.orch.tracing.provider.force_flush, 10_000)
    finally:
        server.shutdown()
        server.server_close()
    assert bodies, "no OTLP request reached the collector"
    payload = b"".join(b for _, _, b in bodies)
    assert {(p, c) for p, c, _ in bodies} == {("/v1/traces", "application/x-protobuf")}
    for needle in (b"engine.request", b"stream.end", b"corr-otlp-1", task_id.encode()):
        assert needle in payload


def test_otlp_endpoint_without_the_extra_fails_at_startup(monkeypatch):
    """ORCH-7042: a configured endpoint without the exporter names the extra to install."""
    from llama_orch.orchestratord.errors import StartupError
    from llama_orch.orchestratord.tracing import Tracing

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(StartupError, match=r"llama-orch-orchestratord\[otlp\]"):
        Tracing("http://127.0.0.1:1/v1/traces")


# -- startup self-tests -----------------------------------------------------------


async def test_self_tests_pass_and_are_reported(start_orchestrator, mock_config, caplog):
    """ORCH-7050..7052: preload, decode, cancel, telemetry run before Ready; logged and
    listed in /v1/capabilities."""
    caplog.set_level(logging.INFO, logger="llama_orch.orchestratord")
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 2}))
    assert run.orch.pools["mock"].ready_replicas()
    async with run.http.get(run.url + "/v1/capabilities") as r:
        caps = await r.json()
    [report] = caps["self_tests"]
    assert report["pool_id"] == "mock" and report["replica_id"] == "mock-e0"
    assert report["passed"] is True
    assert [c["name"] for c in report["checks"]] == ["preload", "decode", "cancel", "telemetry"]
    assert all(c["ok"] and c["duration_ms"] >= 0 and c["detail"] for c in report["checks"])
    lines = _json_lines(caplog, "self-test")
    assert [(x["check"], x["ok"], x["replica_id"]) for x in lines] == [
        ("preload", True, "mock-e0"),
        ("decode", True, "mock-e0"),
        ("cancel", True, "mock-e0"),
        ("telemetry", True, "mock-e0"),
    ]
    assert all(x["engine_version"] == "mock-1" for x in lines)
    # the self-test's generations are not tasks: no task metric moved
    async with run.http.get(run.url + "/metrics") as r:
        text = await r.text()
    assert "tasks_started_total{" not in text and "tokens_out_total{" not in text
    # past startup a new identity (here an engine upgrade) is not gated again
    pool = run.orch.pools["mock"]
    upgraded = msgspec.structs.replace(pool.states["mock-e0"], engine_version="mock-2")
    run.orch.on_replica_change(upgraded)
    assert [r.state.engine_version for r in pool.ready_replicas()] == ["mock-2"]
    assert len(run.orch.self_tests.reports) == 1


async def test_failed_self_test_keeps_the_pool_unready(mock_config):
    """ORCH-7053: an engine that cannot decode stays out of the pool with the reason."""
    from llama_orch.orchestratord.serve import serve

    stop = asyncio.Event()
    listening: asyncio.Future = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve(
            mock_config(adapter_options={"fail": "error_at_start"}),
            shutdown_trigger=stop.wait,
            on_listening=lambda u, o: listening.set_result((u, o)),
        )
    )
    try:
        url, orch = await asyncio.wait_for(listening, 30)
        pool = orch.pools["mock"]
        async with aiohttp.ClientSession() as http:
            health: dict = {}
            for _ in range(200):
                async with http.get(url + "/v1/pools/mock/health") as r:
                    health = await r.json()
                if "self-test decode failed" in (health["last_error"] or ""):
                    break
                await asyncio.sleep(0.05)
            assert not pool.ready_replicas()
            assert health["ready"] is False
            assert health["last_error"].startswith("self-test decode failed: ")
            async with http.get(url + "/v1/capabilities") as r:
                [report] = (await r.json())["self_tests"]
            assert report["passed"] is False
            assert [(c["name"], c["ok"]) for c in report["checks"]] == [
                ("preload", True),
                ("decode", False),
            ]
            async with http.post(url + "/v1/tasks", json={"prompt": "x", "max_tokens": 4}) as r:
                assert r.status == 503 and (await r.json())["code"] == "POOL_UNREADY"
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)


async def test_self_test_off_lets_ready_through(start_orchestrator, mock_config):
    """ORCH-7050: with ``observability.self_test: false`` nothing is checked or reported."""
    cfg = mock_config()
    cfg = msgspec.structs.replace(
        cfg, observability=msgspec.structs.replace(cfg.observability, self_test=False)
    )
    run = await start_orchestrator(cfg)
    assert run.orch.pools["mock"].ready_replicas()
    async with run.http.get(run.url + "/v1/capabilities") as r:
        assert (await r.json())["self_tests"] == []
