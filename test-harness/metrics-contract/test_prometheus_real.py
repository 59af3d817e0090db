"""A real Prometheus server scrapes a live orchestratord (ORCH-7023).

Prometheus (Debian's build, provisioned by ``tools/prometheus_tools.py``)
listens on loopback with its TSDB in a temporary directory, loads the alert
rules of ``ci/alerts``, scrapes orchestratord every second, and is stopped by
its process group ID when the test ends, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import msgspec
from llama_orch.core.config import Config

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _prometheus(tools, target: str, tmp: Path) -> Iterator[str]:
    port = _free_port()
    cfg = tmp / "prometheus.yml"
    cfg.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ROOT / "ci" / "alerts" / "llama-orch.rules.yml")],
                "scrape_configs": [
                    {"job_name": "orchestratord", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    log = open(tmp / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            str(tools.prometheus),
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


async def _query(http: aiohttp.ClientSession, base: str, expr: str) -> dict:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as r:
        return await r.json()


async def test_prometheus_scrapes_tasks_enqueued_total(
    start_orchestrator, prometheus_tools, tmp_path, metrics_lint
):
    """ORCH-7023: real Prometheus returns tasks_enqueued_total through its query API."""
    config = msgspec.convert(
        {
            "server": {"port": 0, "shutdown_grace_s": 1.0},
            "auth": {"enabled": False},  # ORCH-8001: explicit, tests only
            "pools": [
                {
                    "id": "main",
                    "engine": "mock",
                    "model": "mock-model",
                    "endpoints": ["mock://0"],
                    "adapter_options": {"token_delay_ms": 1, "eos_after": 4},
                }
            ],
        },
        Config,
    )
    orch = await start_orchestrator(config)
    await orch.wait_ready("main")
    for _ in range(3):
        status, body, _ = await orch.submit(prompt="hi", max_tokens=4, priority="batch")
        assert status == 202, body
        await orch.events(body["task_id"])
    target = orch.url.removeprefix("http://")
    with _prometheus(prometheus_tools, target, tmp_path) as prom:
        async with aiohttp.ClientSession() as http:
            result: list = []
            for _ in range(300):  # up to 30 s: start, first scrapes
                with contextlib.suppress(aiohttp.ClientError):
                    answer = await _query(http, prom, "tasks_enqueued_total")
                    result = answer["data"]["result"]
                    if result:
                        break
                await asyncio.sleep(0.1)
            log = (tmp_path / "prometheus.log").read_text(errors="replace")
            assert result, f"no tasks_enqueued_total in Prometheus; its log:\n{log[-3000:]}"
            assert len(result) == 1
            series = result[0]
            assert series["metric"] == {
                "__name__": "tasks_enqueued_total",
                "engine": "mock",
                "pool_id": "main",
                "priority": "batch",
                "api": "orchqueue",  # ORCH-9220
                "instance": target,
                "job": "orchestratord",
            }
            assert float(series["value"][1]) == 3.0
            async with http.get(f"{prom}/api/v1/targets") as r:
                targets = (await r.json())["data"]["activeTargets"]
            assert [t["health"] for t in targets] == ["up"]
            async with http.get(f"{prom}/api/v1/rules") as r:
                groups = (await r.json())["data"]["groups"]
            rules = [rule for g in groups for rule in g["rules"]]
            assert len(rules) == 6 and all(rule["health"] != "err" for rule in rules), rules
            # every dashboard expression is valid PromQL for this server
            dashboards = sorted((ROOT / "ci" / "dashboards").glob("*.json"))
            for path in dashboards:
                for panel in json.loads(path.read_text())["panels"]:
                    for t in panel["targets"]:
                        answer = await _query(http, prom, t["expr"])
                        assert answer["status"] == "success", (panel["title"], answer)
