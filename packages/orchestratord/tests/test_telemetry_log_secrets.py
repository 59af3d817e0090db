"""No key and no Authorization value in any log line (ORCH-8008, ORCH-1504).

Two scans of a representative workload with keys: accepted, refused (401 with
a wrong key, 403 with the wrong role), foreign (404), cancelled and failing
requests. One runs orchestratord in-process with every logger at DEBUG and
scans every record, its arguments and exception text; the other runs the
``orchestratord`` console script at ``--log-level DEBUG`` plus ``llorch`` with
``$LLORCH_API_KEY`` and scans everything both processes wrote. The root
conftest also scans every log record of the whole test run (see there).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
from llama_orch.orchestratord.auth import hash_key
from llama_orch.orchestratord.main import JsonFormatter

KEYS = {
    "a": "llo_logscan-a-" + "A1" * 20,
    "b": "llo_logscan-b-" + "B2" * 20,
    "admin": "llo_logscan-admin-" + "C3" * 20,
}
WRONG = "llo_logscan-wrong-" + "D4" * 20


def _auth_doc() -> dict:
    keys = [
        {"id": f"key-{n}", "role": "tenant", "tenant": n, "hash": hash_key(KEYS[n])}
        for n in ("a", "b")
    ]
    keys.append({"id": "key-admin", "role": "admin", "hash": hash_key(KEYS["admin"])})
    return {"keys": keys}


def _leaks(text: str) -> list[str]:
    found = [name for name, key in {**KEYS, "wrong": WRONG}.items() if key in text]
    # a key's hash is not a secret, but the key's own bytes in any form are
    found += [name for name, key in KEYS.items() if key[4:20] in text]
    if "Bearer llo" in text or "authorization': 'Bearer" in text.lower():
        found.append("Authorization value")
    return found


async def _workload(url: str, http: aiohttp.ClientSession) -> None:
    def h(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    a, b, admin = KEYS["a"], KEYS["b"], KEYS["admin"]
    sid = str(uuid.uuid4())
    async with http.post(
        url + "/v1/tasks", json={"prompt": "x", "max_tokens": 3, "session_id": sid}, headers=h(a)
    ) as r:
        assert r.status == 202
        tid = (await r.json())["task_id"]
    async with http.get(f"{url}/v1/tasks/{tid}/stream", headers=h(a)) as r:
        assert b"event: end" in await r.read()
    checks = [
        ("POST", "/v1/tasks", WRONG, 401),
        ("POST", "/v1/tasks", "", 401),
        ("POST", "/v1/tasks", admin, 403),
        ("GET", "/v1/replicasets", a, 403),
        ("GET", "/metrics", b, 403),
        ("GET", f"/v1/tasks/{tid}/stream", b, 404),
        ("POST", f"/v1/tasks/{tid}/cancel", b, 404),
        ("GET", f"/v1/sessions/{sid}", b, 404),
        ("POST", f"/v1/tasks/{tid}/cancel", a, 204),
        ("GET", "/metrics", admin, 200),
        ("POST", "/v1/pools/mock/drain", admin, 200),
        ("POST", "/v1/tasks", a, 503),  # the pool drains now
    ]
    for method, path, key, status in checks:
        async with http.request(
            method,
            url + path,
            json={"prompt": "y"} if path == "/v1/tasks" else None,
            headers=h(key),
        ) as r:
            await r.read()
            assert r.status == status, (method, path, status, r.status)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.json.format(record))
        self.texts.append(repr(record.args) + repr(record.__dict__))


async def test_in_process_logs_hold_no_key(start_orchestrator, mock_config):
    """ORCH-8008: every record of every logger at DEBUG, with args and extras."""
    root = logging.getLogger()
    collect = _Collect()
    old = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    try:
        run = await start_orchestrator(
            mock_config(auth=_auth_doc(), adapter_options={"token_delay_ms": 1})
        )
        await _workload(run.url, run.http)
    finally:
        root.removeHandler(collect)
        root.setLevel(old)
    text = "\n".join(collect.texts)
    assert "forbidden: key key-admin" in text  # the scan sees the auth logs ...
    assert "task ended" in text  # ... and the task logs
    assert _leaks(text) == []
    assert _leaks(f"x Bearer {KEYS['a']}") and _leaks(KEYS["b"])  # the scanner is not blind


async def test_daemon_and_cli_output_hold_no_key(tmp_path: Path):
    """ORCH-8008: the orchestratord console script at DEBUG and `llorch submit` with
    $LLORCH_API_KEY, all of their output scanned."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import yaml

    cfg = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 1.0},
        "auth": _auth_doc(),
        "pools": [
            {
                "id": "mock",
                "engine": "mock",
                "model": "mock-model",
                "endpoints": ["mock://0"],
                "adapter_options": {"token_delay_ms": 1},
            }
        ],
    }
    path = tmp_path / "orchestratord.yaml"
    path.write_text(yaml.safe_dump(cfg))
    bindir = Path(sys.executable).parent
    out = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [str(bindir / "orchestratord"), "--config", str(path), "--log-level", "DEBUG"],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(
                        url + "/v1/pools/mock/health",
                        headers={"Authorization": f"Bearer {KEYS['a']}"},
                    ) as r:
                        if r.status == 200 and (await r.json())["ready"]:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            env = {**os.environ, "LLORCH_API_KEY": KEYS["a"]}
            cli = await asyncio.create_subprocess_exec(
                str(bindir / "llorch"), "submit", "--url", url, "--max-tokens", "3", "hello",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            )  # fmt: skip
            cli_out, _ = await cli.communicate()
            assert cli.returncode == 0, cli_out
            env["LLORCH_API_KEY"] = WRONG
            cli = await asyncio.create_subprocess_exec(
                str(bindir / "llorch"), "submit", "--url", url, "hello",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            )  # fmt: skip
            refused, _ = await cli.communicate()
            assert cli.returncode == 2 and b"UNAUTHENTICATED" in refused
            await _workload(url, http)
    finally:
        proc.terminate()
        proc.wait(20)
        out.close()
    text = (tmp_path / "daemon.log").read_text() + cli_out.decode() + refused.decode()
    assert '"level": "debug"' in text and "forbidden" in text  # DEBUG output was captured
    assert _leaks(text) == []
