"""API keys replaced on SIGHUP, the running set kept on a bad file (ORCH-8009)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import msgspec
import yaml
from llama_orch.orchestratord.auth import hash_key
from llama_orch.orchestratord.main import _reload
from llama_orch.testing_engines.python_engines import stop_group

KEYS = {name: f"llo_test-rotate-{name}-{'r' * 36}" for name in ("a", "b", "c", "admin")}


def _entry(name: str) -> dict[str, str]:
    if name == "admin":
        return {"id": "key-admin", "role": "admin", "hash": hash_key(KEYS[name])}
    return {"id": f"key-{name}", "role": "tenant", "tenant": name, "hash": hash_key(KEYS[name])}


def _bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


async def _status(http: aiohttp.ClientSession, url: str, name: str) -> int:
    async with http.post(
        url + "/v1/tasks", json={"prompt": "hi", "max_tokens": 2}, headers=_bearer(name)
    ) as r:
        await r.read()
        return r.status


async def test_a_reload_swaps_the_keys_and_a_bad_file_keeps_them(
    start_orchestrator, mock_config, tmp_path, caplog
):
    """ORCH-8009: the keys file rotated (b out, c in) and the config's own key kept;
    a stream opened before the swap with a key the swap removes goes to its end; an
    unreadable file, duplicate ids, or no key at all leave the running set, logged
    without a key; `auth.enabled: false` in the file changes nothing."""
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump([_entry("b")]))
    auth = {"enabled": True, "keys": [_entry("a"), _entry("admin")], "keys_file": str(keys_file)}
    run = await start_orchestrator(mock_config(auth=auth, adapter_options={"token_delay_ms": 20}))
    url, http = run.url, run.http
    assert [await _status(http, url, n) for n in ("a", "b", "c")] == [202, 202, 401]

    # a stream of b's, opened before the reload that removes b
    async with http.post(
        url + "/v1/tasks", json={"prompt": "long", "max_tokens": 30}, headers=_bearer("b")
    ) as r:
        assert r.status == 202
        tid = (await r.json())["task_id"]
    stream = await http.get(url + f"/v1/tasks/{tid}/stream", headers=_bearer("b"))
    assert stream.status == 200
    first = await stream.content.readline()
    assert first  # the stream is open and authenticated

    path = tmp_path / "orch.json"
    doc = msgspec.to_builtins(run.orch.config)
    path.write_bytes(msgspec.json.encode(doc))
    keys_file.write_text(yaml.safe_dump([_entry("c")]))
    _reload([run.orch], str(path))
    assert [await _status(http, url, n) for n in ("a", "b", "c")] == [202, 401, 202]
    rest = await stream.content.read()  # b's stream still ends with its task
    stream.release()
    assert b"event: end" in rest, rest[-300:]

    caplog.set_level(logging.INFO, logger="llama_orch.orchestratord")
    bad_files = [
        "- {id: k, role: tenant",  # not YAML
        yaml.safe_dump([_entry("b"), {**_entry("c"), "id": "key-b"}]),  # duplicate ids
    ]
    for text in bad_files:
        caplog.clear()
        keys_file.write_text(text)
        _reload([run.orch], str(path))
        assert [await _status(http, url, n) for n in ("a", "b", "c")] == [202, 401, 202]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "keys" in errors[0], errors
        assert not any(k in errors[0] for k in KEYS.values()), errors
    # no key at all with authentication on: refused, the running set stays
    keys_file.write_text("[]")
    doc["auth"]["keys"] = []
    path.write_bytes(msgspec.json.encode(doc))
    _reload([run.orch], str(path))
    assert [await _status(http, url, n) for n in ("a", "b", "c")] == [202, 401, 202]

    # turning authentication off is not a rotation: still 401 without a key
    caplog.clear()
    doc["auth"] = {**auth, "enabled": False}
    keys_file.write_text(yaml.safe_dump([_entry("c")]))
    path.write_bytes(msgspec.json.encode(doc))
    _reload([run.orch], str(path))
    async with http.post(url + "/v1/tasks", json={"prompt": "hi"}) as r:
        assert r.status == 401
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("auth.enabled" in m and "restart" in m for m in warned), warned


async def test_sighup_reloads_the_keys_of_a_running_daemon(tmp_path: Path):
    """ORCH-8009 through the real signal: the orchestratord console script, its keys
    file rotated, `kill -HUP` by PID."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(yaml.safe_dump([_entry("a")]))
    cfg = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 1.0},
        "auth": {"enabled": True, "keys": [_entry("admin")], "keys_file": str(keys_file)},
        "pools": [
            {"id": "mock", "engine": "mock", "model": "mock-model", "endpoints": ["mock://0"]}
        ],
    }
    path = tmp_path / "orchestratord.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = (tmp_path / "daemon.log").open("wb")
    bindir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [str(bindir / "orchestratord"), "--config", str(path)],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(url + "/v1/pools/mock/health", headers=_bearer("a")) as r:
                        if r.status == 200 and (await r.json())["ready"]:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            assert [await _status(http, url, n) for n in ("a", "c")] == [202, 401]
            keys_file.write_text(yaml.safe_dump([_entry("c")]))
            os.kill(proc.pid, signal.SIGHUP)
            for _ in range(100):  # the handler runs on the daemon's loop
                if await _status(http, url, "c") == 202:
                    break
                await asyncio.sleep(0.05)
            assert [await _status(http, url, n) for n in ("a", "c")] == [401, 202]
    finally:
        stop_group(proc)  # its process group, by PID, even when the test failed
        out.close()
    log = (tmp_path / "daemon.log").read_text()
    assert "keys reloaded" in log, log[-2000:]
    assert not any(k in log for k in KEYS.values())
