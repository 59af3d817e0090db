"""``llorch models`` against a live orchestratord with a mock pool (ORCH-3340, ORCH-3341).

The daemon is a real subprocess with a catalog file of its own; models are
small local files (``file`` source), so nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from llama_orch.cli.main import main

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
ADMIN = "llo_models-test-admin-" + "a" * 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("models-cmd")
    port = _free_port()
    digest = "sha256:" + hashlib.sha256(ADMIN.encode()).hexdigest()
    config = tmp_path / "orchestratord.yaml"
    config.write_text(
        f"""\
server: {{host: 127.0.0.1, port: {port}, shutdown_grace_s: 1.0}}
auth:
  keys: [{{id: ops, role: admin, hash: "{digest}"}}]
catalog: {{path: {tmp_path / "catalog.sqlite3"}, trust: {{mode: warn}}}}
pools:
  - {{id: stable, engine: mock, model: "tiny:stable", endpoints: ["mock://0"]}}
  - {{id: next, engine: mock, model: "tiny:next", endpoints: ["mock://0"]}}
"""
    )
    log = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("orchestratord")), "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},  # downloads stay here
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(url + "/v1/capabilities", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # any answer (401: no key sent) means it listens
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "orchestratord did not listen"
                time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def llorch(daemon: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("LLORCH_API_KEY", ADMIN)
    monkeypatch.setenv("LLORCH_URL", daemon)
    return daemon


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["models", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_models_commands_walk_the_lifecycle(
    llorch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = []
    for tag, state in (("stable", "active"), ("next", "draft")):
        model = tmp_path / f"{tag}.gguf"
        model.write_bytes(b"GGUF" + tag.encode() * 1000)
        code, out, err = _run(
            capsys, "add", "tiny", str(model), "--tag", tag, "--state", state, "--license", "MIT"
        )
        assert code == 0, err
        ids.append(out.strip())
        assert f"tiny {ids[-1]} is {state}" in err
    stable, nxt = ids

    code, out, _ = _run(capsys, "list", "--json")
    doc = json.loads(out)
    assert [(m["id"], m["state"]) for m in doc["models"] if m["name"] == "tiny"] == [
        (stable, "active"),
        (nxt, "draft"),
    ]
    code, out, _ = _run(capsys, "list")
    assert code == 0 and f"{nxt}  tiny" in out and "draft" in out

    code, out, _ = _run(capsys, "verify", stable)
    assert code == 0 and out.startswith(f"{stable}: warn (unsigned)")  # trust mode warn
    assert _run(capsys, "canary", nxt, "--weight", "0.25")[0] == 0
    code, out, _ = _run(capsys, "show", nxt)
    assert "canary 25%" in out
    code, _, err = _run(capsys, "promote", nxt, "--drain-deadline-ms", "500")
    assert code == 0 and f"tiny {nxt} is active" in err and f"tiny {stable} is deprecated" in err
    code, _, err = _run(capsys, "rollback", nxt)
    assert code == 0 and f"tiny {stable} is active" in err and f"tiny {nxt} is canary" in err
    code, _, err = _run(capsys, "deprecate", stable, "--replacement", nxt)
    assert code == 0 and f"tiny {stable} is deprecated" in err
    code, _, err = _run(capsys, "retire", nxt, "--drain-deadline-ms", "500")
    assert code == 0 and "drained pools: next" in err
    # a refusal: the server's message and exit code 2 (a 4xx)
    code, _, err = _run(capsys, "canary", nxt, "--weight", "0.5")
    assert code == 2 and "allowed next states: none" in err
    code, _, err = _run(capsys, "add", "tiny", "ftp:nowhere/x.gguf")
    assert code == 2 and "unknown model source" in err


# The schemas live in the repository checkout, not in the wheel: the standalone
# install (tools/tests/test_standalone_install.py) runs the tests without them.
@pytest.mark.skipif(not SCHEMAS.is_dir(), reason="needs the repository's packages/cli/schemas")
def test_models_json_output_matches_the_committed_schemas(
    llorch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ORCH-3341."""
    model = tmp_path / "schema.gguf"
    model.write_bytes(b"GGUF schema check")
    code, out, err = _run(capsys, "add", "schema-check", str(model), "--tag", "x")
    assert code == 0, err
    mid = out.strip()
    code, out, _ = _run(capsys, "list", "--json")
    jsonschema.validate(
        json.loads(out), json.loads((SCHEMAS / "models-list.schema.json").read_text())
    )
    code, out, _ = _run(capsys, "show", mid, "--json")
    show = json.loads(out)
    jsonschema.validate(show, json.loads((SCHEMAS / "models-show.schema.json").read_text()))
    assert show["id"] == mid and show["provenance"]["source"] == "file"


def test_models_add_shows_the_download_progress(
    llorch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ORCH-3376: the daemon's progress arrives as it fetches (plain lines off a terminal)."""
    from llama_orch.testing.model_server import ModelFileServer

    blob = b"GGUF" + os.urandom(3 << 20)
    (tmp_path / "web.gguf").write_bytes(blob)
    with ModelFileServer() as origin:
        origin.add_file("web.gguf", tmp_path / "web.gguf")
        code, out, err = _run(capsys, "add", "web", f"{origin.url}/files/web.gguf")
        assert code == 0, err
        assert out.strip() == hashlib.sha256(blob).hexdigest()[:16]
        assert "downloading web.gguf: 3 MiB (100%)" in err, err
        origin.cut_after(1 << 20)  # a download that stops: the refusal, exit code 2
        code, _, err = _run(capsys, "add", "web2", f"{origin.url}/files/web.gguf#sha256={'0' * 64}")
        assert code == 2 and "stopped at" in err, err
