"""A queued task's stream through a real reverse proxy with a 5 s idle timeout (ORCH-1964).

Debian's ``nginx`` is provisioned into the user cache by ``tools/nginx_tools.py``
(``apt-get download`` + ``dpkg-deb -x``, like Prometheus) and configured here:
``proxy_read_timeout 5s`` on ``/`` (a common load-balancer idle cut, made short),
and ``1s`` on ``/short/`` as the control that shows the proxy really cuts a
stream idle for longer than its timeout. The task waits about 30 s behind two
tasks on the only slot of a mock replica; with ``limits.sse_keepalive_s: 2``
its stream survives, and its ``queued`` positions (at most one per 8 s here, so they alone could not
hold the stream open) fall to 0 before ``started``. Costs about 35 s.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from llama_orch.core.sse import SSEParser
from llama_orch.pool_managerd.engine import free_port
from llama_orch.testing_engines.llamacpp import real_engine_required

ROOT = Path(__file__).resolve().parents[3]

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    proxy_http_version 1.1;
    proxy_buffering off;
    location /short/ {{
      proxy_read_timeout 1s;
      proxy_pass http://127.0.0.1:{upstream}/;
    }}
    location / {{
      proxy_read_timeout 5s;
      proxy_pass http://127.0.0.1:{upstream};
    }}
  }}
}}
"""


def _nginx_tools() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nginx_tools", ROOT / "tools" / "nginx_tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nginx_tools"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def nginx_binary() -> Path:
    tools = _nginx_tools()
    try:
        return Path(tools.provision().nginx)
    except tools.ProvisionError as exc:
        if real_engine_required():
            pytest.fail(f"cannot provision nginx: {exc}")
        pytest.skip(f"cannot provision nginx: {exc}")


@pytest.fixture
def nginx(nginx_binary: Path, tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream_port: int) -> str:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(NGINX_CONF.format(d=tmp_path, port=port, upstream=upstream_port))
        with (tmp_path / "stderr.log").open("wb") as err:
            proc = subprocess.Popen(
                [str(nginx_binary), "-p", str(tmp_path), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        procs.append(proc)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}"
            time.sleep(0.05)
        raise AssertionError("nginx did not listen")

    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


async def _read(http, url: str) -> tuple[list[tuple[str, dict]], float]:
    import json

    events: list[tuple[str, dict]] = []
    parser = SSEParser()
    t0 = time.monotonic()
    async with http.get(url) as resp:
        assert resp.status == 200
        try:
            async for chunk in resp.content.iter_any():
                events += [(m.event, json.loads(m.data)) for m in parser.feed(chunk)]
        except Exception as exc:  # the proxy cut the connection mid-stream
            events.append(("cut", {"error": repr(exc)}))
    return events, time.monotonic() - t0


@pytest.mark.workspace_only
async def test_queued_stream_survives_an_idle_timeout_proxy(start_orchestrator, mock_config, nginx):
    cfg = mock_config(adapter_options={"token_delay_ms": 100}, limits={"sse_keepalive_s": 2})
    # queued events at most every 8 s: alone they could not hold a 5 s idle window open
    cfg.scheduling.waiting.queued_event_interval_s = 8
    run = await start_orchestrator(cfg)
    proxy = nginx(int(run.url.rsplit(":", 1)[1]))

    async def tid(**body) -> str:
        resp = await run.submit(**body)
        assert resp.status == 202
        return (await resp.json())["task_id"]

    await tid(max_tokens=150)  # 15 s on the only slot
    await tid(max_tokens=150)  # 15 s more
    waiting = await tid(max_tokens=3)
    control = await tid(max_tokens=3)

    # the control: a 1 s idle cut ends the stream of a waiting task early, without an end
    cut_events, cut_s = await _read(run.http, f"{proxy}/short/v1/tasks/{control}/stream")
    assert not any(k in ("end", "error") for k, _ in cut_events), cut_events
    assert cut_s < 10, cut_s

    events, took = await _read(run.http, f"{proxy}/v1/tasks/{waiting}/stream")
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end", kinds
    assert took >= 25, took  # issue #19: a 30 s wait through several 5 s idle windows
    positions = [d["queue_position"] for k, d in events if k == "queued"]
    assert positions and positions[-1] == 0 and positions[0] >= 1, positions
    assert kinds.index("started") > max(i for i, k in enumerate(kinds) if k == "queued")
    print(
        f"through nginx: waited {took:.1f} s; positions {positions}; control cut at {cut_s:.1f} s"
    )
