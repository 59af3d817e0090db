"""Rich tables and plain lines for the operator views (ORCH-5110, ORCH-5101).

Every view exists twice: as rich renderables for a terminal and as plain
lines (no colour, no cursor movement) for a pipe or a log; both carry the
same facts.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

__all__ = [
    "plain_sessions",
    "plain_status",
    "plain_tasks",
    "sessions_table",
    "status_view",
    "task_rows",
    "tasks_table",
]


def _breaker(rep: dict[str, Any]) -> str:
    if rep["circuit_open"]:
        return "OPEN"
    if rep["backoff_ms"]:
        return f"backoff {rep['backoff_ms']} ms"
    return "closed"


def _queued(pool: dict[str, Any]) -> str:
    parts = [f"{prio} {n}" for prio, n in pool["queued"].items() if n]
    return ", ".join(parts) or "-"


def _weight_shares(tenants: list[dict[str, Any]]) -> dict[str, float]:
    total = sum(t["weight"] for t in tenants) or 1
    return {t["tenant"]: t["weight"] / total for t in tenants}


def _share(t: dict[str, Any]) -> str:
    return ", ".join(f"{p} {v:.0%}" for p, v in t["share"].items()) or "-"


def status_view(status: dict[str, Any], title: str = "llama-orch") -> RenderableType:
    pools = Table(title=f"{title}: pools", title_justify="left", expand=False)
    for col in ("pool", "ready", "draining", "queue", "queued", "running/slots", "model"):
        pools.add_column(col)
    replicas = Table(title="replicas", title_justify="left")
    for col in ("replica", "status", "busy/slots", "tokens/s", "restarts", "breaker", "error"):
        replicas.add_column(col)
    for pool in status["pools"]:
        pools.add_row(
            pool["pool_id"],
            "yes" if pool["ready"] else "[red]no[/red]",
            "[yellow]yes[/yellow]" if pool["draining"] else "no",
            f"{pool['queue_depth']}/{pool['queue_capacity']}",
            _queued(pool),
            f"{pool['running']}/{pool['slots']}",
            pool["model_ref"],
        )
        for rep in pool["replicas"]:
            breaker = _breaker(rep)
            replicas.add_row(
                rep["replica_id"],
                rep["status"],
                f"{rep['busy']}/{rep['slots']}",
                f"{rep['tokens_per_s']:.1f}",
                str(rep["restarts"]),
                f"[red]{breaker}[/red]" if breaker == "OPEN" else breaker,
                (rep["last_error"] or "")[:60],
            )
    tenants = Table(title="tenants", title_justify="left")
    for col in ("tenant", "weight", "weight share", "queued", "running", "admission share"):
        tenants.add_column(col)
    fair = _weight_shares(status["tenants"])
    for t in status["tenants"]:
        tenants.add_row(
            t["tenant"],
            str(t["weight"]),
            f"{fair[t['tenant']]:.0%}",
            str(t["queued"]),
            str(t["running"]),
            _share(t),
        )
    counts = "  ".join(f"{k} {v}" for k, v in status["tasks"].items())
    return Group(pools, replicas, tenants, f"tasks: {counts}")


def plain_status(status: dict[str, Any]) -> list[str]:
    lines = []
    for pool in status["pools"]:
        lines.append(
            f"pool {pool['pool_id']}: ready={'yes' if pool['ready'] else 'no'} "
            f"draining={'yes' if pool['draining'] else 'no'} "
            f"queue={pool['queue_depth']}/{pool['queue_capacity']} queued=[{_queued(pool)}] "
            f"running={pool['running']}/{pool['slots']} model={pool['model_ref']}"
        )
        for rep in pool["replicas"]:
            error = f" error={rep['last_error']}" if rep["last_error"] else ""
            lines.append(
                f"  replica {rep['replica_id']}: {rep['status']} busy={rep['busy']}/{rep['slots']} "
                f"tokens/s={rep['tokens_per_s']:.1f} restarts={rep['restarts']} "
                f"breaker={_breaker(rep)}{error}"
            )
    fair = _weight_shares(status["tenants"])
    for t in status["tenants"]:
        lines.append(
            f"tenant {t['tenant']}: weight={t['weight']} ({fair[t['tenant']]:.0%}) "
            f"queued={t['queued']} running={t['running']} share=[{_share(t)}]"
        )
    lines.append("tasks: " + " ".join(f"{k}={v}" for k, v in status["tasks"].items()))
    return lines


TASK_COLUMNS = ("task", "tenant", "state", "priority", "pool", "replica", "pos", "tokens", "age")


def task_rows(tasks: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            t["task_id"],
            t["tenant"],
            t["state"],
            t["priority"],
            t["pool_id"],
            t["replica_id"] or "-",
            "-" if t["queue_position"] is None else str(t["queue_position"]),
            str(t["tokens_out"]),
            f"{t['age_ms'] / 1000:.1f}s",
        )
        for t in tasks
    ]


def tasks_table(tasks: list[dict[str, Any]], total: int) -> Table:
    table = Table(title=f"tasks ({len(tasks)} of {total})", title_justify="left")
    for col in TASK_COLUMNS:
        table.add_column(col)
    for row in task_rows(tasks):
        table.add_row(*row)
    return table


def plain_tasks(tasks: list[dict[str, Any]]) -> list[str]:
    return ["\t".join(TASK_COLUMNS), *("\t".join(row) for row in task_rows(tasks))]


SESSION_COLUMNS = ("tenant", "session", "turns", "tokens in", "tokens out", "ttl", "replica")


def _session_row(s: dict[str, Any]) -> tuple[str, ...]:
    return (
        s["tenant"],
        s["session_id"],
        str(s["turns"]),
        str(s["tokens_in"]),
        str(s["tokens_out"]),
        f"{s['ttl_ms_remaining'] / 1000:.0f}s",
        s["replica_id"] or "-",
    )


def sessions_table(sessions: list[dict[str, Any]]) -> Table:
    table = Table(title=f"sessions ({len(sessions)})", title_justify="left")
    for col in SESSION_COLUMNS:
        table.add_column(col)
    for s in sessions:
        table.add_row(*_session_row(s))
    return table


def plain_sessions(sessions: list[dict[str, Any]]) -> list[str]:
    return ["\t".join(SESSION_COLUMNS), *("\t".join(_session_row(s)) for s in sessions)]
