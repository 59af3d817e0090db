"""What ``llorch demo`` shows before the Haiku: orchestration (ORCH-5100, ORCH-5101).

Three tenants with different weights submit at once at both priorities; a
live view follows the daemon's ``/v1/admin/status`` (per-tenant queue depth
and running tasks, the share of started tasks against the weights, tasks per
replica, tokens/s); then one running task is canceled and the freed slot
goes to a queued task; then an overload burst is answered with 429 and the
daemon's computed ``Retry-After``. Every figure comes from the daemon's
answers; :class:`Figures` keeps them for the end summary.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .client import OrchClient
from .errors import ApiError

__all__ = ["TENANTS", "Figures", "Showcase", "contended_shares"]

# tenant -> fair-share weight; written into the demo config (scheduling.tenants)
TENANTS: dict[str, int] = {"acme": 4, "globex": 2, "initech": 1}
BATCH_PER_TENANT = 6
INTERACTIVE_PER_TENANT = 1
WAVE_MAX_TOKENS = 6
LONG_MAX_TOKENS = 400
BURST = 48
POLL_S = 0.25
PROMPTS = (
    "Name a fruit.",
    "Say hello in French.",
    "Count to three.",
    "Name a colour.",
    "Name a planet.",
    "Say one word about queues.",
)


@dataclass
class Figures:
    """Everything the end summary reports, measured during the run."""

    submitted: Counter[str] = field(default_factory=Counter)
    contended: Counter[str] = field(default_factory=Counter)  # batch starts while all waited
    wait_ms: dict[str, list[int]] = field(default_factory=dict)  # queue wait by priority
    peak_tokens_per_s: float = 0.0
    peak_running: int = 0
    cancel_task: str = ""
    cancel_to_start_ms: float | None = None
    burst_accepted: int = 0
    burst_refused: int = 0
    retry_after_s: float | None = None
    backoff_ms: int | None = None
    policy_label: str | None = None
    wave_s: float = 0.0


def contended_shares(tasks: list[dict[str, Any]], tenants: list[str]) -> Counter[str]:
    """Batch starts per tenant while every tenant still had batch tasks waiting.

    Only then do the weights decide who goes next (weighted fair queuing); once
    a tenant's queue is empty the others take its share, as they should.
    """
    batch = [t for t in tasks if t["priority"] == "batch" and t["state"] != "queued"]
    batch.sort(key=lambda t: (t["created_ms"] + t["queue_wait_ms"], t["created_ms"]))
    left = Counter(t["tenant"] for t in tasks if t["priority"] == "batch")
    starts: Counter[str] = Counter()
    for t in batch:
        if any(left[name] == 0 for name in tenants):
            break
        starts[t["tenant"]] += 1
        left[t["tenant"]] -= 1
    return starts


class Showcase:
    """Runs the three acts against a ready daemon; draws the live view meanwhile."""

    def __init__(
        self,
        url: str,
        tenant_keys: dict[str, str],
        admin_key: str,
        console: Console,
        *,
        pool_id: str,
    ) -> None:
        self.url = url
        self.keys = tenant_keys
        self.console = console
        self.pool_id = pool_id
        self.live_mode = console.is_terminal
        self.figures = Figures()
        self.events: list[str] = []
        self.status: dict[str, Any] | None = None
        self.started_by: Counter[str] = Counter()
        self._admin = OrchClient(url, api_key=admin_key)
        # no retries: the burst is there to show the refusal and its Retry-After
        self._clients = {
            name: OrchClient(url, api_key=key, max_retries=0) for name, key in tenant_keys.items()
        }
        self._live: Live | None = None
        self._last_plain = 0.0

    # -- plumbing -------------------------------------------------------------

    def note(self, text: str) -> None:
        """One line of the story: kept in the live view, printed as is off a terminal."""
        self.events.append(text)
        if self._live is None:
            self.console.print(f"[llorch] {text}", markup=False, highlight=False)
        else:
            self._live.update(self.view(), refresh=True)

    async def poll(self) -> dict[str, Any]:
        status: dict[str, Any] = await self._admin.admin_status()
        self.status = status
        for pool in status["pools"]:
            rate = sum(r["tokens_per_s"] for r in pool["replicas"])
            self.figures.peak_tokens_per_s = max(self.figures.peak_tokens_per_s, rate)
            self.figures.peak_running = max(self.figures.peak_running, pool["running"])
        if self._live is not None:
            self._live.update(self.view(), refresh=True)
        elif time.monotonic() - self._last_plain >= 1.0:
            self._last_plain = time.monotonic()
            self.console.print(self.plain_line(), markup=False, highlight=False)
        return status

    def plain_line(self) -> str:
        assert self.status is not None
        parts = []
        tenants = {t["tenant"]: t for t in self.status["tenants"]}
        for name in TENANTS:
            t = tenants.get(name, {"queued": 0, "running": 0})
            parts.append(
                f"{name} q={t['queued']} run={t['running']} started={self.started_by[name]}"
            )
        reps = [
            f"{r['replica_id']} {r['busy']}/{r['slots']} {r['tokens_per_s']:.0f} tok/s"
            for p in self.status["pools"]
            for r in p["replicas"]
        ]
        return "[llorch] live: " + " | ".join(parts) + " || " + ", ".join(reps)

    def view(self) -> RenderableType:
        table = Table(title="llama-orch demo: three tenants share one pool", title_justify="left")
        for col in (
            "tenant",
            "weight",
            "fair share",
            "queued",
            "running",
            "started",
            "share of started",
        ):
            table.add_column(col, justify="left" if col == "tenant" else "right")
        tenants = {t["tenant"]: t for t in (self.status or {}).get("tenants", [])}
        total_w = sum(TENANTS.values())
        started = sum(self.started_by.values()) or 1
        for name, weight in TENANTS.items():
            t = tenants.get(name, {"queued": 0, "running": 0})
            table.add_row(
                name,
                str(weight),
                f"{weight / total_w:.0%}",
                str(t["queued"]),
                str(t["running"]),
                str(self.started_by[name]),
                f"{self.started_by[name] / started:.0%}",
            )
        replicas = Table(title="replicas", title_justify="left")
        for col in ("replica", "status", "running/slots", "tokens/s", "queue"):
            replicas.add_column(col)
        for pool in (self.status or {}).get("pools", []):
            for rep in pool["replicas"]:
                replicas.add_row(
                    rep["replica_id"],
                    rep["status"],
                    f"{rep['busy']}/{rep['slots']}",
                    f"{rep['tokens_per_s']:.1f}",
                    f"{pool['queue_depth']}/{pool['queue_capacity']}",
                )
        story = Text("\n".join(f"• {line}" for line in self.events[-8:]))
        return Group(table, replicas, story)

    @contextmanager
    def live_view(self) -> Iterator[None]:
        if not self.live_mode:
            yield
            return
        with Live(self.view(), console=self.console, auto_refresh=False, transient=False) as live:
            self._live = live
            try:
                yield
            finally:
                live.update(self.view(), refresh=True)
                self._live = None

    async def aclose(self) -> None:
        await self._admin.aclose()
        for client in self._clients.values():
            await client.aclose()

    async def _tasks(self, **filters: Any) -> list[dict[str, Any]]:
        doc = await self._admin.admin_tasks(limit=1000, **filters)
        return list(doc["tasks"])

    # -- the acts -------------------------------------------------------------

    async def run(self) -> Figures:
        await self._admin.__aenter__()
        for client in self._clients.values():
            await client.__aenter__()
        try:
            with self.live_view():
                await self.fair_share()
                await self.cancel_frees_a_slot()
                await self.overload_burst()
        finally:
            await self.aclose()
        return self.figures

    async def fair_share(self) -> None:
        """Act 1: every tenant submits at once, batch and interactive."""
        weights = ", ".join(f"{n} {w}" for n, w in TENANTS.items())
        self.note(
            f"act 1: three tenants (weights {weights}) each submit {BATCH_PER_TENANT} batch "
            f"and {INTERACTIVE_PER_TENANT} interactive task at once"
        )

        async def one(tenant: str, n: int, priority: str) -> str:
            accepted = await self._clients[tenant].submit(
                prompt=PROMPTS[n % len(PROMPTS)],
                max_tokens=WAVE_MAX_TOKENS,
                priority=priority,
                pool_id=self.pool_id,
                seed=n,
            )
            return accepted.task_id

        started = time.monotonic()
        jobs = []
        for n in range(BATCH_PER_TENANT):
            for tenant in TENANTS:
                jobs.append(one(tenant, n, "batch"))
        for n in range(INTERACTIVE_PER_TENANT):
            for tenant in TENANTS:
                jobs.append(one(tenant, n, "interactive"))
        ids = set(await asyncio.gather(*jobs))
        for tenant in TENANTS:
            self.figures.submitted[tenant] = BATCH_PER_TENANT + INTERACTIVE_PER_TENANT
        self.note(f"{len(ids)} tasks accepted; the queue orders them by priority, then weight")
        while True:
            await self.poll()
            tasks = [t for t in await self._tasks() if t["task_id"] in ids]
            self.started_by = Counter(t["tenant"] for t in tasks if t["state"] != "queued")
            if all(t["state"] in ("completed", "failed", "canceled") for t in tasks):
                break
            await asyncio.sleep(POLL_S)
        self.figures.wave_s = time.monotonic() - started
        self.figures.contended = contended_shares(tasks, list(TENANTS))
        for t in tasks:
            self.figures.wait_ms.setdefault(t["priority"], []).append(t["queue_wait_ms"])
        shares = self.figures.contended
        total = sum(shares.values()) or 1
        self.note(
            "while all three waited, batch starts went "
            + ", ".join(f"{n} {shares[n]} ({shares[n] / total:.0%})" for n in TENANTS)
            + f" against weights {weights}"
        )
        waits = {p: statistics.median(v) for p, v in self.figures.wait_ms.items()}
        self.note(
            "median queue wait: "
            + ", ".join(f"{p} {waits[p]:.0f} ms" for p in ("interactive", "batch") if p in waits)
        )
        await self.poll()

    async def _state(self, task_id: str, want: set[str], timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            doc = await self._admin.admin_task(task_id)
            if doc["state"] in want or time.monotonic() > deadline:
                return str(doc["state"])
            await self.poll()
            await asyncio.sleep(POLL_S / 2)

    async def cancel_frees_a_slot(self) -> None:
        """Act 2: fill every slot with long tasks, queue one more, cancel a long one."""
        assert self.status is not None
        (pool,) = [p for p in self.status["pools"] if p["pool_id"] == self.pool_id]
        slots = max(1, pool["slots"])
        names = list(TENANTS)
        self.note(f"act 2: {slots} long task(s) fill every slot, one more waits in the queue")
        long_ids = []
        for n in range(slots):
            tenant = names[n % len(names)]
            accepted = await self._clients[tenant].submit(
                prompt="Tell a long story about a lighthouse keeper.",
                max_tokens=LONG_MAX_TOKENS,
                priority="batch",
                pool_id=self.pool_id,
            )
            long_ids.append(accepted.task_id)
        for tid in long_ids:
            await self._state(tid, {"running", "completed", "failed", "canceled"})
        waiter = await self._clients["initech"].submit(
            prompt="Name a river.", max_tokens=WAVE_MAX_TOKENS, pool_id=self.pool_id
        )
        await self.poll()
        victim = long_ids[0]
        self.figures.cancel_task = victim
        t0 = time.monotonic()
        await self._admin.admin_cancel(victim)
        self.note(f"canceled running task {victim[:8]}: its slot is free at once")
        state = await self._state(waiter.task_id, {"running", "completed", "failed"})
        self.figures.cancel_to_start_ms = (time.monotonic() - t0) * 1000
        self.note(
            f"the queued initech task took the freed slot ({state}) "
            f"{self.figures.cancel_to_start_ms:.0f} ms after the cancel"
        )
        for tid in long_ids[1:]:
            await self._admin.admin_cancel(tid)
        await self._state(waiter.task_id, {"completed", "failed", "canceled"})

    async def overload_burst(self) -> None:
        """Act 3: one tenant fires more tasks than the queue holds."""
        assert self.status is not None
        (pool,) = [p for p in self.status["pools"] if p["pool_id"] == self.pool_id]
        self.note(
            f"act 3: globex fires {BURST} tasks at once into a queue of {pool['queue_capacity']}"
        )
        client = self._clients["globex"]

        async def one(n: int) -> str | ApiError:
            try:
                accepted = await client.submit(
                    prompt="Name a fish.",
                    max_tokens=4,
                    priority="batch",
                    pool_id=self.pool_id,
                    seed=n,
                )
            except ApiError as exc:
                if exc.status != 429:
                    raise
                return exc
            return accepted.task_id

        answers = await asyncio.gather(*(one(n) for n in range(BURST)))
        accepted = [a for a in answers if isinstance(a, str)]
        refused = [a for a in answers if isinstance(a, ApiError)]
        self.figures.burst_accepted, self.figures.burst_refused = len(accepted), len(refused)
        await self.poll()
        if refused:
            first = refused[0]
            self.figures.retry_after_s = first.retry_after_s
            self.figures.backoff_ms = first.backoff_ms
            self.figures.policy_label = first.body.policy_label if first.body else None
            wait = "not given" if first.retry_after_s is None else f"{first.retry_after_s:g} s"
            self.note(
                f"{len(accepted)} accepted, {len(refused)} refused: 429 {first.code} with "
                f"Retry-After: {wait} (X-Backoff-Ms: {first.backoff_ms}, "
                "computed from the queue's drain rate)"
            )
        else:
            self.note(f"all {len(accepted)} accepted: the queue had room")
        for tid in accepted:  # no need to wait for them: the Haiku is next
            await self._admin.admin_cancel(tid)
        self.note(f"canceled the {len(accepted)} accepted burst tasks; the pool is idle again")
        await self.poll()
