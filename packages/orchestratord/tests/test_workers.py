"""``orchestratord --workers N`` (issue #20): ORCH-2752 (N processes on one port, one
shared store) and ORCH-2753 (refused without a store every process reaches).

The real test runs the daemon's own command line with a real ``valkey-server``
(provisioned by ``llama_orch.state_valkey.EmbeddedServer``): both workers answer on
the one port and register as live instances of the store; SIGTERM to the parent
stops them all. No engine is needed for that (the pool's endpoint is closed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_orch.core.config import Config, load_config
from llama_orch.orchestratord.main import main
from llama_orch.orchestratord.workers import refusal
from llama_orch.pool_managerd.engine import free_port
from llama_orch.testing_engines.valkey import valkey_server


def _config(tmp_path: Path, **overrides: object) -> Config:
    doc: dict[str, object] = {
        "server": {"host": "127.0.0.1", "port": 18080},
        "auth": {"enabled": False},
        "state": {"backend": "valkey", "url": "redis://127.0.0.1:1/0"},
        "pools": [
            {"id": "p", "engine": "llamacpp-http", "model": "m", "endpoints": ["http://x:1"]}
        ],
        **overrides,
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    return load_config(str(path))


def test_workers_are_refused_without_a_shared_store(tmp_path: Path) -> None:
    """ORCH-2753: each reason is named; one worker needs none of it."""
    assert refusal(_config(tmp_path), 2) is None
    assert refusal(_config(tmp_path, state=None), 1) is None
    no_store = refusal(_config(tmp_path, state=None), 2)
    assert no_store is not None and "state store" in no_store
    memory = refusal(_config(tmp_path, state={"backend": "memory"}), 2)
    assert memory is not None and "memory" in memory
    private = refusal(_config(tmp_path, state={"backend": "valkey"}), 2)
    assert private is not None and "state.url" in private
    embedded = refusal(
        _config(tmp_path, pools=[{"id": "e", "engine": "llamacpp-http", "model": "m"}]), 2
    )
    assert embedded is not None and "embedded" in embedded
    port0 = refusal(_config(tmp_path, server={"host": "127.0.0.1", "port": 0}), 2)
    assert port0 is not None and "port" in port0
    # and the command line stops with status 2 before starting anything
    _config(tmp_path, state=None)
    assert main(["--config", str(tmp_path / "c.json"), "--workers", "2"]) == 2


@pytest.fixture
def valkey_url(tmp_path: Path) -> Iterator[str]:
    with valkey_server(tmp_path / "valkey") as url:
        yield url


@pytest.mark.real_engine
def test_two_workers_share_one_port_and_one_store(tmp_path: Path, valkey_url: str) -> None:
    """ORCH-2752: two processes on one port, both live instances of the one store;
    SIGTERM to the parent stops every worker and the parent exits 0."""
    port = free_port()
    cfg = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 0.25},
        "auth": {"enabled": False},
        "state": {"backend": "valkey", "url": valkey_url, "lease_ms": 1500},
        "pools": [
            {
                "id": "p",
                "engine": "llamacpp-http",
                "model": "m",
                "endpoints": [f"http://127.0.0.1:{free_port()}"],  # nothing listens
            }
        ],
    }
    path = tmp_path / "orch.json"
    path.write_text(json.dumps(cfg))
    log = (tmp_path / "orch.log").open("wb")
    parent = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "orchestratord"),
            "--config",
            str(path),
            "--workers",
            "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        live: list[str] = []
        answered: set[str] = set()
        deadline = time.monotonic() + 90
        # child processes have no event to await: poll the port, bounded
        while time.monotonic() < deadline and (len(live) < 2 or len(answered) < 2):
            assert parent.poll() is None, (tmp_path / "orch.log").read_text()[-2000:]
            with contextlib.suppress(OSError, ValueError):
                url = f"http://127.0.0.1:{port}/v1/capabilities"
                with urllib.request.urlopen(url, timeout=5) as r:  # a new connection each
                    store = json.loads(r.read())["state_store"]
                live = store["instances"]
                answered.add(store["instance_id"])
            time.sleep(0.1)
        assert len(live) == 2, live
        assert answered == set(live), (answered, live)  # both answered on the one port
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)  # a worker left behind, by group
        log.close()
