"""``llorch demo``: llama-orch at work on a real model, in one command
(ORCH-5003, ORCH-5100..ORCH-5102).

It writes a one-pool config with three tenant keys and an admin key, starts
``orchestratord`` on it, shows the daemon's log as progress while the engine
is provisioned (the first run builds ``llama-server`` and can take about six
minutes), waits for the pool to report ready, then shows orchestration (three
weighted tenants at both priorities, a cancel that frees a slot, an overload
burst answered with ``Retry-After``: :mod:`._showcase`), runs the Haiku task
of ARCHITECTURE §10 with live tokens as the finale, prints the measured
figures, and always stops the daemon again, on success, error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from ._daemon import Orchestratord, find_orchestratord
from ._render import follow_task, print_summary, stderr_console
from ._showcase import TENANTS, Figures, Showcase
from .client import OrchClient
from .errors import (
    EXIT_FAILURE,
    ApiError,
    ClientError,
    ConnectionFailed,
    OrchestratordExited,
    PoolFailed,
    ProtocolError,
    ReadinessTimeout,
    exit_code_for,
    exit_code_for_error_code,
)
from .haiku import HAIKU_GRAMMAR, check_haiku, haiku_messages, make_nonce, minute_words, now_minute
from .models import PoolHealth

__all__ = ["DEMO_MODEL", "DEMO_POOL", "demo_config_yaml", "run_demo", "wait_ready"]

DEMO_POOL = "default"
DEMO_MODEL = "pypi:qwen2.5-coder-0.5b-instruct-q4_k_m"
DEMO_QUEUE_CAPACITY = 32
READY_TIMEOUT_S = 45 * 60.0
HEARTBEAT_S = 30.0


def demo_config_yaml(
    *, port: int, key_hashes: dict[str, str], admin_hash: str, model: str = DEMO_MODEL
) -> str:
    """The demo's orchestratord config: one CPU pool with one two-slot replica, a tenant
    key per demo tenant with its weight, and an admin key, all stored as hashes
    (ORCH-8021, ORCH-5102)."""
    quoted = json.dumps  # a JSON string is a valid YAML double-quoted scalar
    keys = "".join(
        f"    - {{id: {name}, role: tenant, tenant: {name}, hash: {digest}}}\n"
        for name, digest in key_hashes.items()
    )
    weights = "".join(f"    {name}: {{weight: {TENANTS.get(name, 1)}}}\n" for name in key_hashes)
    return (
        "# Written by `llorch demo`; CPU inference is for development only.\n"
        "server:\n"
        "  host: 127.0.0.1\n"
        f"  port: {port}\n"
        "auth:\n"
        "  keys:\n"
        f"{keys}"
        f"    - {{id: operator, role: admin, hash: {admin_hash}}}\n"
        "allow_cpu_inference: true\n"
        "admission:\n"
        f"  queue_capacity: {DEMO_QUEUE_CAPACITY}\n"
        "  full_policy: reject\n"
        "scheduling:\n"
        "  tenants:\n"
        f"{weights}"
        "pools:\n"
        f"  - id: {DEMO_POOL}\n"
        "    engine: llamacpp-http\n"
        f"    model: {quoted(model)}\n"
        "    replicas: 1\n"
        "    slots: 2\n"
        "    ctx: 2048\n"
        "    threads: 2\n"
    )


def _new_key() -> tuple[str, str]:
    key = "llo_" + secrets.token_urlsafe(32)  # this run only; config holds its hash
    return key, "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(
    orch: OrchClient,
    daemon: Orchestratord,
    console: Console,
    *,
    pool_id: str = DEMO_POOL,
    timeout_s: float = READY_TIMEOUT_S,
    poll_s: float = 1.0,
) -> PoolHealth:
    """Poll pool health until ready; fail early if the daemon exits or the pool fails."""
    started = time.monotonic()
    next_heartbeat = started + HEARTBEAT_S
    health: PoolHealth | None = None
    assert daemon.exited is not None
    while True:
        if daemon.returncode is not None:
            raise OrchestratordExited(daemon.returncode, daemon.output_tail())
        try:
            health = await orch.pool_health(pool_id)
        except (ConnectionFailed, ApiError, ProtocolError):
            pass  # not listening yet, or the pool is not registered yet
        else:
            if health.ready:
                return health
            if health.last_error and health.failed_replicas():
                raise PoolFailed(pool_id, health.last_error)
        now = time.monotonic()
        if now - started > timeout_s:
            detail = f"; last_error: {health.last_error}" if health and health.last_error else ""
            raise ReadinessTimeout(
                f"pool {pool_id!r} not ready after {timeout_s / 60:.0f} min{detail}"
            )
        if now >= next_heartbeat:
            next_heartbeat += HEARTBEAT_S
            elapsed = int(now - started)
            console.print(
                f"[llorch] waiting for pool {pool_id!r} to become ready "
                f"({elapsed // 60}m{elapsed % 60:02d}s; the first run builds the engine, "
                "about 6 min)",
                markup=False,
            )
        await asyncio.wait({daemon.exited}, timeout=poll_s)  # wakes at once on daemon exit


async def run_haiku(
    orch: OrchClient, console: Console, *, out: TextIO | None = None
) -> tuple[int, bool]:
    """The finale: stream the Haiku; (exit code, accepted by the §10 check)."""
    words, nonce = minute_words(now_minute()), make_nonce()
    console.print(f"[bold]Haiku task[/bold]: minute words {words!r}, nonce {nonce!r}")
    submitted_at = time.monotonic()
    accepted = await orch.submit(
        workload="chat",
        messages=haiku_messages(words, nonce),
        temperature=0.0,
        seed=42,
        max_tokens=64,
        pool_id=DEMO_POOL,
        grammar=HAIKU_GRAMMAR,
    )
    outcome = await follow_task(orch, accepted.task_id, submitted_at, out=out)
    check = check_haiku(outcome.text, words, nonce)
    started = outcome.started
    rows = [
        ("engine", started.engine if started else "n/a"),
        ("engine_version", started.engine_version if started else "n/a"),
        ("model_digest", started.model_digest if started else "n/a"),
        ("minute words", f"{'yes' if check.has_minute_words else 'no'} ({words})"),
        ("nonce", f"{'yes' if check.has_nonce else 'no'} ({nonce})"),
        ("lines", str(check.non_empty_lines)),
    ]
    print_summary(console, outcome, rows)
    if outcome.end is None:
        code = exit_code_for_error_code(outcome.error.code) if outcome.error else EXIT_FAILURE
        return code, False
    return 0, check.accepted


def print_figures(console: Console, figures: Figures, wall_s: float) -> None:
    """The end summary of the orchestration acts: only measured numbers."""
    shares = figures.contended
    total = sum(shares.values()) or 1
    weight_total = sum(TENANTS.values())
    rows = [
        (
            "fair share",
            ", ".join(
                f"{n} {shares[n] / total:.0%} (weight {w / weight_total:.0%})"
                for n, w in TENANTS.items()
            )
            + f" of {sum(shares.values())} batch starts while all three waited",
        ),
    ]
    for prio in ("interactive", "batch"):
        waits = sorted(figures.wait_ms.get(prio, []))
        if waits:
            rows.append((f"wait {prio}", f"median {waits[len(waits) // 2]} ms, max {waits[-1]} ms"))
    rows += [
        ("peak running", str(figures.peak_running)),
        ("peak tokens/s", f"{figures.peak_tokens_per_s:.1f}"),
        ("wave", f"{sum(figures.submitted.values())} tasks in {figures.wave_s:.1f} s"),
    ]
    if figures.cancel_to_start_ms is not None:
        rows.append(("cancel", f"freed slot reused after {figures.cancel_to_start_ms:.0f} ms"))
    burst = f"{figures.burst_accepted} accepted, {figures.burst_refused} refused with 429"
    if figures.retry_after_s is not None:
        burst += f", Retry-After {figures.retry_after_s:g} s, X-Backoff-Ms {figures.backoff_ms}"
    rows += [("burst", burst), ("demo wall time", f"{wall_s:.1f} s")]
    console.print("[bold]── orchestration ──[/bold]")
    for key, value in rows:
        console.print(f"  [cyan]{key:<14}[/cyan] {escape(value)}")


async def run_demo(
    *,
    model: str = DEMO_MODEL,
    port: int = 0,
    keep_config: bool = False,
    ready_timeout_s: float = READY_TIMEOUT_S,
    out: TextIO | None = None,
    showcase: bool = True,
) -> int:
    """``showcase=False`` runs only the Haiku (the lifecycle tests' fake daemon has
    no operator routes)."""
    console = stderr_console()
    began = time.monotonic()
    try:
        executable = find_orchestratord()
    except ClientError as exc:
        console.print(str(exc), markup=False)
        return exit_code_for(exc)
    workdir = Path(tempfile.mkdtemp(prefix="llorch-demo-"))
    config_path = workdir / "orchestratord.yaml"
    port = port or free_port()
    tenant_keys = {name: _new_key() for name in TENANTS}
    admin_key, admin_hash = _new_key()
    config_path.write_text(
        demo_config_yaml(
            port=port,
            key_hashes={name: digest for name, (_, digest) in tenant_keys.items()},
            admin_hash=admin_hash,
            model=model,
        ),
        encoding="utf-8",
    )
    key = tenant_keys["acme"][0]
    url = f"http://127.0.0.1:{port}"
    console.print(f"[llorch] starting {executable} on {url} (model {model})", markup=False)
    daemon = Orchestratord(executable, config_path, console)
    try:
        await daemon.start()
        async with OrchClient(url, api_key=key) as orch:
            await wait_ready(orch, daemon, console, timeout_s=ready_timeout_s)
            console.print(f"[llorch] pool {DEMO_POOL!r} is ready", markup=False)
            figures = None
            if showcase:
                with daemon.quiet():  # warnings still show; the INFO lines would drown the view
                    figures = await Showcase(
                        url,
                        {name: k for name, (k, _) in tenant_keys.items()},
                        admin_key,
                        console,
                        pool_id=DEMO_POOL,
                    ).run()
                console.print("[bold]finale[/bold]: the Haiku task, streamed live", markup=True)
            with daemon.hold_logs():
                code, accepted = await run_haiku(orch, console, out=out)
            if code != 0:
                return code
            if figures is not None:
                print_figures(console, figures, time.monotonic() - began)
            verdict = "accepted" if accepted else "streamed, but the haiku misses a requirement"
            console.print(f"[bold green]demo complete[/bold green]: {verdict}")
            return 0
    except OrchestratordExited as exc:
        console.print(f"[bold red]error[/bold red] {escape(str(exc))}")
        if exc.output_tail:
            console.print(exc.output_tail, markup=False)
        return EXIT_FAILURE
    except ClientError as exc:
        console.print(f"[bold red]error[/bold red] {escape(str(exc))}")
        return exit_code_for(exc)
    finally:
        stopped = await daemon.stop()
        if stopped is not None:
            console.print(f"[llorch] orchestratord stopped (exit code {stopped})", markup=False)
        if keep_config:
            console.print(f"[llorch] config kept at {config_path}", markup=False)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
