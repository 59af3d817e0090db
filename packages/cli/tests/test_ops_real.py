"""The operator's commands against one live orchestratord with a real llama-server
(ORCH-5110..ORCH-5116, ORCH-5130).

One daemon serves the whole module (SmolLM2-135M, two slots) to keep the
runtime small; the commands run in-process through ``llorch``'s ``main``.
Pool actions that change the pool (reload, drain) run last.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
from llama_orch.cli.main import main

pytestmark = pytest.mark.real_engine

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
TENANT = "llo_ops-test-tenant-" + "t" * 32
OTHER = "llo_ops-test-other-" + "o" * 32
ADMIN = "llo_ops-test-admin-" + "a" * 32
SID = "0b7d1e52-3f1c-4d2a-9a57-6f4c1b2e8d90"
MODEL = "pypi:smollm2-135m-instruct-q4_1"


def _hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    url: str
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def daemon(llama_server_binary, smollm2_model, tmp_path_factory) -> Iterator[Daemon]:
    port = _free_port()
    config = tmp_path_factory.mktemp("ops") / "orchestratord.yaml"
    config.write_text(
        f"""\
server: {{host: 127.0.0.1, port: {port}, shutdown_grace_s: 2.0}}
auth:
  keys:
    - {{id: team-a, role: tenant, tenant: team-a, hash: "{_hash(TENANT)}"}}
    - {{id: team-b, role: tenant, tenant: team-b, hash: "{_hash(OTHER)}"}}
    - {{id: ops, role: admin, hash: "{_hash(ADMIN)}"}}
allow_cpu_inference: true
scheduling: {{tenants: {{team-a: {{weight: 3}}}}}}
pools:
  - {{id: smol, engine: llamacpp-http, model: {MODEL}, slots: 2, ctx: 1024, threads: 2}}
"""
    )
    log = (config.parent / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("orchestratord")), "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (config.parent / "daemon.log").read_text()[-3000:]
            health = _get(url, "/v1/pools/smol/health", ADMIN)
            if health and health.get("ready"):
                break
            assert time.monotonic() < deadline, f"pool never ready: {health}"
            time.sleep(0.2)
        yield Daemon(url, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _get(url: str, path: str, key: str) -> dict | None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _submit(url: str, key: str, **body: object) -> str:
    import urllib.request

    body.setdefault("workload", "chat")
    body.setdefault("messages", [{"role": "user", "content": "Tell me about lighthouses."}])
    req = urllib.request.Request(
        url + "/v1/tasks",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["task_id"])


def _wait_state(url: str, task_id: str, states: set[str], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        doc = _get(url, f"/v1/admin/tasks/{task_id}", ADMIN)
        assert doc is not None
        if doc["state"] in states:
            return doc
        assert time.monotonic() < deadline, doc
        time.sleep(0.1)


def llorch(capsys, monkeypatch, *argv: str, key: str | None = ADMIN) -> tuple[int, str, str]:
    if key is None:
        monkeypatch.delenv("LLORCH_API_KEY", raising=False)
    else:
        monkeypatch.setenv("LLORCH_API_KEY", key)
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


def test_status_json_and_human(daemon, capsys, monkeypatch) -> None:
    """ORCH-5110, ORCH-5114: pools, replicas, breakers, tenants; JSON per its schema."""
    code, out, _ = llorch(capsys, monkeypatch, "status", "--url", daemon.url, "--json")
    assert code == 0
    doc = json.loads(out)
    _schema("status.schema.json").validate(doc)
    (pool,) = doc["pools"]
    assert pool["pool_id"] == "smol" and pool["ready"] and pool["slots"] == 2
    assert pool["replicas"][0]["circuit_open"] is False
    assert {t["tenant"]: t["weight"] for t in doc["tenants"]}["team-a"] == 3
    code, out, _ = llorch(capsys, monkeypatch, "status", "--url", daemon.url)
    assert code == 0
    assert "pool smol: ready=yes" in out and "breaker=closed" in out
    assert "tenant team-a: weight=3" in out


def test_tasks_ls_show_tail_cancel_and_sessions(daemon, capsys, monkeypatch) -> None:
    """ORCH-5111, ORCH-5114: an admin sees and cancels every tenant's tasks."""
    done = _submit(daemon.url, TENANT, max_tokens=6, session_id=SID)
    _wait_state(daemon.url, done, {"completed"})
    running = _submit(daemon.url, OTHER, max_tokens=400)
    _wait_state(daemon.url, running, {"running"})

    code, out, _ = llorch(capsys, monkeypatch, "tasks", "ls", "--url", daemon.url, "--json")
    assert code == 0
    doc = json.loads(out)
    _schema("tasks-ls.schema.json").validate(doc)
    ids = [t["task_id"] for t in doc["tasks"]]
    assert ids.index(running) < ids.index(done)  # newest first, both tenants
    code, out, _ = llorch(
        capsys, monkeypatch, "tasks", "ls", "--url", daemon.url, "--state", "running"
    )
    assert code == 0 and running in out and done not in out and "team-b" in out

    code, out, _ = llorch(capsys, monkeypatch, "tasks", "show", done, "--url", daemon.url, "--json")
    doc = json.loads(out)
    _schema("tasks-show.schema.json").validate(doc)
    assert code == 0 and doc["state"] == "completed" and doc["tenant"] == "team-a"
    assert doc["tokens_out"] > 0

    code, out, err = llorch(capsys, monkeypatch, "tasks", "tail", done, "--url", daemon.url)
    assert code == 0 and out.strip() and "started on smol-r0" in err and "end:" in err

    code, _, err = llorch(capsys, monkeypatch, "tasks", "cancel", running, "--url", daemon.url)
    assert code == 0 and f"canceled task {running}" in err
    assert _wait_state(daemon.url, running, {"canceled"}, timeout_s=5)["state"] == "canceled"

    code, out, _ = llorch(capsys, monkeypatch, "sessions", "--url", daemon.url, "--json")
    doc = json.loads(out)
    _schema("sessions.schema.json").validate(doc)
    assert code == 0
    assert [(s["tenant"], s["session_id"], s["turns"]) for s in doc["sessions"]] == [
        ("team-a", SID, 1)
    ]
    code, out, _ = llorch(capsys, monkeypatch, "sessions", "--url", daemon.url)
    assert code == 0 and SID in out


def test_top_refreshes_plain_lines_off_a_terminal(daemon, capsys, monkeypatch) -> None:
    """ORCH-5110, ORCH-5101."""
    code, out, _ = llorch(
        capsys, monkeypatch, "top", "--url", daemon.url, "--count", "2", "--interval", "0.1"
    )
    assert code == 0 and out.count("pool smol: ready=yes") == 2
    assert "\x1b[" not in out  # no cursor movement or colour off a terminal


def test_errors_say_what_to_do(daemon, capsys, monkeypatch) -> None:
    """ORCH-5115: unreachable daemon, missing key, wrong key, tenant key on an admin call."""
    dead = f"http://127.0.0.1:{_free_port()}"
    code, _, err = llorch(capsys, monkeypatch, "status", "--url", dead)
    assert code == 1 and "cannot connect" in err and "--url or $LLORCH_URL" in err
    code, _, err = llorch(capsys, monkeypatch, "status", "--url", daemon.url, key=None)
    assert code == 2 and "UNAUTHENTICATED" in err and "export LLORCH_API_KEY=" in err
    wrong = "llo_not-configured-" + "w" * 32
    code, _, err = llorch(capsys, monkeypatch, "tasks", "ls", "--url", daemon.url, key=wrong)
    assert code == 2 and "not configured on this daemon" in err
    assert wrong not in err  # ORCH-8008: never echo a key
    code, _, err = llorch(
        capsys, monkeypatch, "pools", "reset", "smol", "--url", daemon.url, key=TENANT
    )
    assert code == 2 and "FORBIDDEN" in err and "needs an admin key" in err
    assert "llorch keys new --id ops --admin" in err
    code, _, err = llorch(capsys, monkeypatch, "submit", "hi", "--url", daemon.url, key=ADMIN)
    assert code == 2 and "needs a tenant key" in err


def test_keys_new_and_completion(capsys, monkeypatch) -> None:
    """ORCH-5113, ORCH-5116 (no daemon needed)."""
    code, out, err = llorch(capsys, monkeypatch, "keys", "new", "--id", "ci", "--tenant", "ci")
    key = out.strip()
    assert code == 0 and key.startswith("llo_") and len(key) >= 40
    assert key not in err and _hash(key) in err and "tenant: ci" in err
    code, out, err = llorch(capsys, monkeypatch, "keys", "new", "--id", "root", "--admin")
    assert code == 0 and "role: admin" in err and _hash(out.strip()) in err
    for shell in ("bash", "zsh", "tcsh"):
        code, out, _ = llorch(capsys, monkeypatch, "completion", shell)
        assert code == 0
        words = ("status", "tasks", "sessions", "pools", "policies", "keys", "json", "deadline-ms")
        for word in words:
            assert word in out, (shell, word)


def test_submit_and_cancel_as_a_tenant(daemon, capsys, monkeypatch) -> None:
    """ORCH-5001, ORCH-5002 on the real engine, with the tenant's key."""
    code, out, err = llorch(
        capsys,
        monkeypatch,
        *("submit", "Say hello.", "--chat", "--max-tokens", "4", "--url", daemon.url),
        key=TENANT,
    )
    assert code == 0, err
    assert out.strip() and "end reason" in err
    code, out, err = llorch(
        capsys,
        monkeypatch,
        *("submit", "Tell a long story.", "--max-tokens", "400", "--no-stream"),
        *("--url", daemon.url),
        key=TENANT,
    )
    task_id = out.strip()
    assert code == 0 and task_id, err
    code, _, err = llorch(capsys, monkeypatch, "cancel", task_id, "--url", daemon.url, key=TENANT)
    assert code == 0 and f"cancel sent for task {task_id}" in err
    assert _wait_state(daemon.url, task_id, {"canceled"}, timeout_s=10)["state"] == "canceled"


def test_policies_show_and_reload(daemon, capsys, monkeypatch, tmp_path) -> None:
    """ORCH-5140, ORCH-8572: reload from a YAML config's `policies` section, show it (JSON
    per its schema and plain), a refused set keeps the running one, an empty one turns
    policies off."""
    import hashlib

    wat = Path(__file__).resolve().parents[3] / "examples" / "policies" / "admit.wat"
    digest = hashlib.sha256(wat.read_bytes()).hexdigest()
    good = tmp_path / "orchestratord.yaml"
    good.write_text(
        "pools: []  # the rest of the config is ignored\n"
        "policies:\n"
        f"  modules: [{{name: admit, path: {wat}, sha256: {digest}}}]\n"
        "  admission: {policy: admit, on_error: closed}\n"
    )
    code, out, err = llorch(
        capsys, monkeypatch, "policies", "reload", str(good), "--url", daemon.url, "--json"
    )
    assert code == 0, err
    doc = json.loads(out)
    _schema("policies-reload.schema.json").validate(doc)
    hook = {"policy": "admit", "on_error": "closed", "budget_ms": 20.0}
    assert doc == {
        "policies": [{"name": "admit", "kind": "wasm", "sha256": digest}],
        "admission": hook,
        "placement": None,
    }
    code, out, _ = llorch(capsys, monkeypatch, "policies", "show", "--url", daemon.url, "--json")
    assert code == 0 and json.loads(out) == doc
    _schema("policies-show.schema.json").validate(json.loads(out))
    code, out, _ = llorch(capsys, monkeypatch, "policies", "show", "--url", daemon.url)
    assert code == 0
    assert "admission: admit (on_error closed, 20.0 ms)" in out and "placement: -" in out
    assert f"policy admit: wasm sha256 {digest[:12]}" in out
    task = _submit(daemon.url, TENANT, max_tokens=2)  # admitted through the policy
    assert _wait_state(daemon.url, task, {"completed"})["state"] == "completed"

    bad = tmp_path / "bad.json"  # the section itself, pinned to the wrong digest
    bad.write_text(
        json.dumps(
            {
                "modules": [{"name": "admit2", "path": str(wat), "sha256": "0" * 64}],
                "admission": {"policy": "admit2"},
            }
        )
    )
    code, _, err = llorch(capsys, monkeypatch, "policies", "reload", str(bad), "--url", daemon.url)
    assert code == 2 and "INVALID_PARAMS" in err and "sha256" in err
    assert "the running set stays" in err
    code, out, _ = llorch(capsys, monkeypatch, "policies", "show", "--url", daemon.url, "--json")
    assert json.loads(out) == doc

    off = tmp_path / "off.yaml"
    off.write_text("policies: {}\n")
    code, out, err = llorch(
        capsys, monkeypatch, "policies", "reload", str(off), "--url", daemon.url
    )
    assert code == 0, err
    assert "no policy loaded" in out and "admission: -" in out
    code, _, err = llorch(capsys, monkeypatch, "policies", "show", "--url", daemon.url, key=TENANT)
    assert code == 2 and "FORBIDDEN" in err


def test_pools_reset_reload_drain(daemon, capsys, monkeypatch) -> None:
    """ORCH-5112: each calls its control-plane endpoint and prints the result; the
    drain runs last because the pool admits nothing after it."""
    code, out, err = llorch(capsys, monkeypatch, "pools", "reset", "smol", "--url", daemon.url)
    assert code == 0 and "no open circuit breaker" in err
    assert json.loads(out) == {"pool_id": "smol", "replicas": []}

    code, out, err = llorch(
        capsys, monkeypatch, "pools", "reload", "smol", "--model", MODEL, "--url", daemon.url
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model_ref"] == MODEL and doc["replicas"] and "now serves" in err

    running = _submit(daemon.url, TENANT, max_tokens=400)
    _wait_state(daemon.url, running, {"running"})
    code, out, err = llorch(
        capsys, monkeypatch, "pools", "drain", "smol", "--deadline-ms", "300", "--url", daemon.url
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ended"] == 1 and "1 ended at the deadline" in err
    code, out, _ = llorch(capsys, monkeypatch, "status", "--url", daemon.url, "--json")
    assert json.loads(out)["pools"][0]["draining"] is True
