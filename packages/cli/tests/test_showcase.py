"""The demo's orchestration acts against an in-process orchestratord on mock replicas
(ORCH-5100, ORCH-5101): fast, so the acts' logic and the plain-line mode are checked
on every run; the real engine and the live view are in test_demo_real.py."""

from __future__ import annotations

import asyncio
import io
from collections import Counter

import msgspec
from llama_orch.cli._showcase import TENANTS, Showcase, contended_shares
from llama_orch.cli.client import OrchClient
from llama_orch.cli.demo import _new_key, demo_config_yaml, print_figures
from llama_orch.core.config import parse_config
from rich.console import Console


def test_contended_shares_count_only_while_every_tenant_waits() -> None:
    def task(tenant: str, start: int) -> dict:
        return {
            "tenant": tenant,
            "priority": "batch",
            "state": "completed",
            "created_ms": 0,
            "queue_wait_ms": start,
        }

    tasks = [task("a", 1), task("a", 2), task("b", 3), task("a", 4), task("b", 5)]
    # "a" has 3 batch tasks, "b" 2: after a's third start "a" has none left
    assert contended_shares(tasks, ["a", "b"]) == Counter({"a": 3, "b": 1})


async def test_acts_run_against_a_daemon_and_degrade_to_plain_lines() -> None:
    from llama_orch.orchestratord.serve import serve

    keys = {name: _new_key() for name in TENANTS}
    admin, admin_hash = _new_key()
    cfg = parse_config(
        demo_config_yaml(
            port=0, key_hashes={n: h for n, (_, h) in keys.items()}, admin_hash=admin_hash
        )
    )
    pool = msgspec.structs.replace(
        cfg.pools[0],
        engine="mock",
        model="mock-model",
        endpoints=["mock://0"],
        adapter_options={"slots": 2, "token_delay_ms": 20},
    )
    server = msgspec.structs.replace(cfg.server, shutdown_grace_s=1.0)
    cfg = msgspec.structs.replace(cfg, pools=[pool], server=server)
    stop = asyncio.Event()
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve(cfg, shutdown_trigger=stop.wait, on_listening=lambda u, _o: listening.set_result(u))
    )
    try:
        url = await asyncio.wait_for(listening, 30)
        out = io.StringIO()
        console = Console(file=out, force_terminal=False, width=200)
        async with OrchClient(url, api_key=admin) as orch:
            for _ in range(400):
                if (await orch.pool_health("default")).ready:
                    break
                await asyncio.sleep(0.05)
        showcase = Showcase(
            url, {n: k for n, (k, _) in keys.items()}, admin, console, pool_id="default"
        )
        figures = await asyncio.wait_for(showcase.run(), 120)
        print_figures(console, figures, 1.0)
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
    text = out.getvalue()
    assert "\x1b[" not in text  # ORCH-5101: no colour or cursor movement off a terminal
    assert "[llorch] live: acme q=" in text  # the live view's facts as plain lines
    assert sum(figures.submitted.values()) == 21
    # weights 4:2:1 while all three waited: acme started at least as many as the others
    shares = figures.contended
    assert sum(shares.values()) >= 6, shares
    assert shares["acme"] >= shares["globex"] >= shares["initech"], shares
    assert figures.cancel_to_start_ms is not None and "took the freed slot" in text
    assert figures.burst_refused > 0 and figures.retry_after_s is not None
    assert figures.burst_accepted + figures.burst_refused == 48
    assert "refused: 429 ADMISSION_REJECT with Retry-After:" in text
    assert "── orchestration ──" in text and "fair share" in text
    # interactive tasks overtake batch ones (priority weight 8:1)
    assert max(figures.wait_ms["interactive"]) < max(figures.wait_ms["batch"])
