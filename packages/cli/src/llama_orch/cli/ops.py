"""The operator's commands: status, top, tasks, sessions, pools, keys, completion
(ORCH-5110..ORCH-5116).

Read commands print a human view on stdout, or with ``--json`` exactly one
JSON document whose schema is committed under ``packages/cli/schemas/``.
Every failure is printed with what to do next (:func:`hint_for`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any, TextIO

import msgspec
import yaml
from llama_orch.core.api import EndEvent, ErrorEvent, MetricsEvent, StartedEvent, TokenEvent
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from ._render import print_api_error, stderr_console
from ._views import (
    plain_sessions,
    plain_status,
    plain_tasks,
    sessions_table,
    status_view,
    tasks_table,
)
from .client import OrchClient
from .errors import ApiError, ClientError, ConnectionFailed, InvalidRequest, exit_code_for

__all__ = [
    "API_KEY_ENV",
    "add_operator_commands",
    "hint_for",
    "make_key",
    "report_failure",
]

API_KEY_ENV = "LLORCH_API_KEY"
KEY_PREFIX = "llo_"


def api_key() -> str | None:
    """The key from ``$LLORCH_API_KEY`` (ORCH-8020); never a flag: argv is public."""
    return os.environ.get(API_KEY_ENV) or None


def hint_for(exc: ClientError, url: str, *, admin: bool) -> str | None:
    """What the operator should do about ``exc`` (ORCH-5115)."""
    if isinstance(exc, ConnectionFailed):
        return (
            f"is orchestratord running at {url}? Start it with `orchestratord --config FILE` "
            "(`orchestratord init` writes a starter config), or point llorch at it with "
            "--url or $LLORCH_URL."
        )
    if not isinstance(exc, ApiError):
        return None
    if exc.status == 401:
        if api_key() is None:
            return f"this daemon needs an API key: export {API_KEY_ENV}=<key>."
        return (
            f"the key in ${API_KEY_ENV} is not configured on this daemon: check that its "
            "hash is under `auth.keys` of the daemon's config (make one with `llorch keys new`)."
        )
    if exc.status == 403:
        if admin:
            return (
                f"this command needs an admin key, and ${API_KEY_ENV} holds a tenant key. Make "
                "one with `llorch keys new --id ops --admin`, add the printed entry under "
                f"`auth.keys`, restart orchestratord, then export {API_KEY_ENV}=<the admin key>."
            )
        return f"this command needs a tenant key; ${API_KEY_ENV} holds an admin key."
    return None


def report_failure(exc: ClientError, url: str, *, admin: bool = False) -> int:
    console = stderr_console()
    if isinstance(exc, ApiError):
        print_api_error(console, exc)
    else:
        console.print(f"[bold red]error[/bold red] {escape(str(exc))}")
    hint = hint_for(exc, url, admin=admin)
    if hint:
        console.print(f"  [yellow]hint[/yellow]: {escape(hint)}")
    return exit_code_for(exc)


def _print_json(doc: Any, out: TextIO | None = None) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True), file=out or sys.stdout)


def _stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=False)


Runner = Callable[[OrchClient, argparse.Namespace], Awaitable[int]]


async def _admin(args: argparse.Namespace, run: Runner) -> int:
    try:
        async with OrchClient(args.url, api_key=api_key()) as orch:
            return await run(orch, args)
    except ClientError as exc:
        return report_failure(exc, args.url, admin=True)


# -- status and top -----------------------------------------------------------


async def _status(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.admin_status()
    if args.json:
        _print_json(doc)
    elif sys.stdout.isatty():
        _stdout_console().print(status_view(doc))
    else:
        print("\n".join(plain_status(doc)))
    return 0


async def _top(orch: OrchClient, args: argparse.Namespace) -> int:
    """Refresh until interrupted (or ``--count`` snapshots); plain lines off a terminal."""
    shown = 0
    if sys.stdout.isatty():
        with Live(console=_stdout_console(), auto_refresh=False, screen=False) as live:
            while args.count is None or shown < args.count:
                doc = await orch.admin_status()
                live.update(status_view(doc, title=f"llorch top ({args.url})"), refresh=True)
                shown += 1
                if args.count is None or shown < args.count:
                    await asyncio.sleep(args.interval)
        return 0
    while args.count is None or shown < args.count:
        doc = await orch.admin_status()
        stamp = time.strftime("%H:%M:%S")
        print(f"--- {stamp} {args.url}")
        print("\n".join(plain_status(doc)), flush=True)
        shown += 1
        if args.count is None or shown < args.count:
            await asyncio.sleep(args.interval)
    return 0


# -- tasks and sessions ---------------------------------------------------------


async def _tasks_ls(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.admin_tasks(
        state=args.state, tenant=args.tenant, pool_id=args.pool, limit=args.limit
    )
    if args.json:
        _print_json(doc)
    elif sys.stdout.isatty():
        _stdout_console().print(tasks_table(doc["tasks"], doc["total"]))
    else:
        print("\n".join(plain_tasks(doc["tasks"])))
    return 0


async def _tasks_show(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.admin_task(args.task_id)
    if args.json:
        _print_json(doc)
    else:
        width = max(len(k) for k in doc)
        for key, value in doc.items():
            print(f"{key:<{width}}  {'-' if value is None else value}")
    return 0


async def _tasks_tail(orch: OrchClient, args: argparse.Namespace) -> int:
    """Replay then follow the task's events: tokens on stdout, the rest on stderr."""
    console = stderr_console()
    async with aclosing(orch.stream(args.task_id, resume=True, admin=True)) as events:
        async for _, event in events:
            if isinstance(event, TokenEvent):
                sys.stdout.write(event.t)
                sys.stdout.flush()
            elif isinstance(event, StartedEvent):
                console.print(
                    f"[dim]started on {event.replica_id} ({event.engine}), "
                    f"queue wait {event.queue_wait_ms} ms[/dim]"
                )
            elif isinstance(event, MetricsEvent):
                continue
            elif isinstance(event, EndEvent):
                console.print(
                    f"\n[dim]end: {event.reason}, {event.tokens_out} tokens, "
                    f"{event.decode_ms} ms decode[/dim]"
                )
            elif isinstance(event, ErrorEvent):
                console.print(f"\n[red]error[/red] {escape(event.code)}: {escape(event.message)}")
                return 1
    return 0


async def _tasks_cancel(orch: OrchClient, args: argparse.Namespace) -> int:
    await orch.admin_cancel(args.task_id)
    stderr_console().print(f"canceled task {escape(args.task_id)}")
    return 0


async def _sessions(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.admin_sessions()
    if args.json:
        _print_json(doc)
    elif sys.stdout.isatty():
        _stdout_console().print(sessions_table(doc["sessions"]))
    else:
        print("\n".join(plain_sessions(doc["sessions"])))
    return 0


# -- pools --------------------------------------------------------------------


async def _pools_drain(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.drain(args.pool_id, args.deadline_ms)
    stderr_console().print(
        f"pool {escape(args.pool_id)} drained in {doc['waited_ms']} ms: {doc['finished']} "
        f"task(s) finished, {doc['ended']} ended at the deadline; it admits nothing until "
        "a reload"
    )
    _print_json(doc)
    return 0


async def _pools_reload(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.reload(args.pool_id, args.model, args.digest)
    stderr_console().print(
        f"pool {escape(args.pool_id)} now serves {escape(doc['model_ref'])} "
        f"(digest {doc['model_digest'][:12]}) on {', '.join(doc['replicas'])}"
    )
    _print_json(doc)
    return 0


async def _pools_reset(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.reset(args.pool_id)
    reset = ", ".join(doc["replicas"]) or "none (no open circuit breaker)"
    stderr_console().print(f"pool {escape(args.pool_id)}: reset {reset}")
    _print_json(doc)
    return 0


# -- policies (ORCH-5140) -----------------------------------------------------


def policies_section(path: str) -> dict[str, Any]:
    """The ``policies`` section of a config file (YAML or JSON), or the file itself when it
    is the section; an empty file or section turns policies off."""
    text = Path(path).read_text(encoding="utf-8")
    doc = msgspec.json.decode(text) if path.endswith(".json") else yaml.safe_load(text)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise InvalidRequest(f"{path}: expected a mapping (a config or its policies section)")
    section = doc["policies"] if "policies" in doc else doc
    return {} if section is None else dict(section)


def plain_policies(doc: dict[str, Any]) -> list[str]:
    lines = []
    for hook in ("admission", "placement"):
        h = doc.get(hook)
        if h:
            lines.append(f"{hook}: {h['policy']} (on_error {h['on_error']}, {h['budget_ms']} ms)")
        else:
            lines.append(f"{hook}: -")
    for p in doc["policies"]:
        pin = f" sha256 {p['sha256'][:12]}" if p.get("sha256") else ""
        lines.append(f"policy {p['name']}: {p['kind']}{pin}")
    if not doc["policies"]:
        lines.append("no policy loaded")
    return lines


async def _policies_show(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.policies()
    if args.json:
        _print_json(doc)
    else:
        print("\n".join(plain_policies(doc)))
    return 0


async def _policies_reload(orch: OrchClient, args: argparse.Namespace) -> int:
    try:
        section = policies_section(args.file)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"cannot read {args.file}: {exc}") from exc
    try:
        doc = await orch.reload_policies(section)
    except ApiError:
        stderr_console().print("policies not reloaded: the running set stays")
        raise
    if args.json:
        _print_json(doc)
    else:
        stderr_console().print(f"policies reloaded from {escape(args.file)}")
        print("\n".join(plain_policies(doc)))
    return 0


# -- keys and completion ------------------------------------------------------


def make_key() -> tuple[str, str]:
    """A fresh key and the ``sha256:`` hash config stores (ORCH-8002)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, "sha256:" + hashlib.sha256(key.encode()).hexdigest()


async def _keys_new(args: argparse.Namespace) -> int:
    key, digest = make_key()
    entry = f"  - id: {args.id}\n"
    if args.admin:
        entry += "    role: admin\n"
    else:
        entry += f"    role: tenant\n    tenant: {args.tenant}\n"
    entry += f'    hash: "{digest}"\n'
    print(
        "# add under `auth.keys:` of the orchestratord config and restart it;\n"
        f"# hand the key printed on stdout to its owner (it is shown only once)\n{entry}",
        end="",
        file=sys.stderr,
    )
    print(key)
    return 0


async def _completion(args: argparse.Namespace) -> int:
    import shtab  # only this command needs it

    from .main import build_parser

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


# -- argparse wiring ----------------------------------------------------------


def _admin_command(run: Runner) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def command(args: argparse.Namespace) -> int:
        return await _admin(args, run)

    return command


def add_operator_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], url: argparse.ArgumentParser
) -> None:
    """Add the operator's subcommands to ``llorch``'s parser."""
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    status = sub.add_parser(
        "status",
        parents=[url, js],
        help="pools, replicas, breakers, queues and tenants (admin key)",
        description="One snapshot of the daemon: pools, replicas with their circuit "
        "breakers, queues by priority, and tenants with weight and admission share.",
    )
    status.set_defaults(run=_admin_command(_status))

    top = sub.add_parser(
        "top",
        parents=[url],
        help="live view of `status`, refreshed until Ctrl-C (admin key)",
    )
    top.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds (1)")
    top.add_argument("--count", type=int, metavar="N", help="stop after N refreshes")
    top.set_defaults(run=_admin_command(_top))

    tasks = sub.add_parser("tasks", help="list, show, tail or cancel any tenant's tasks")
    tsub = tasks.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    ls = tsub.add_parser("ls", parents=[url, js], help="tasks of every tenant, newest first")
    ls.add_argument(
        "--state", choices=["active", "queued", "running", "completed", "failed", "canceled"]
    )
    ls.add_argument("--tenant", metavar="NAME")
    ls.add_argument("--pool", metavar="ID")
    ls.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (50)")
    ls.set_defaults(run=_admin_command(_tasks_ls))
    show = tsub.add_parser("show", parents=[url, js], help="one task's state and figures")
    show.add_argument("task_id", metavar="ID")
    show.set_defaults(run=_admin_command(_tasks_show))
    tail = tsub.add_parser("tail", parents=[url], help="replay and follow a task's tokens")
    tail.add_argument("task_id", metavar="ID")
    tail.set_defaults(run=_admin_command(_tasks_tail))
    cancel = tsub.add_parser("cancel", parents=[url], help="cancel any tenant's task")
    cancel.add_argument("task_id", metavar="ID")
    cancel.set_defaults(run=_admin_command(_tasks_cancel))

    sessions = sub.add_parser(
        "sessions", parents=[url, js], help="live sessions of every tenant (admin key)"
    )
    sessions.set_defaults(run=_admin_command(_sessions))

    pools = sub.add_parser("pools", help="drain, reload or reset a pool (admin key)")
    psub = pools.add_subparsers(dest="pools_command", required=True, metavar="ACTION")
    drain = psub.add_parser(
        "drain", parents=[url], help="stop admitting, let running tasks finish until a deadline"
    )
    drain.add_argument("pool_id", metavar="POOL")
    drain.add_argument("--deadline-ms", type=int, metavar="N", help="default: the server's 30000")
    drain.set_defaults(run=_admin_command(_pools_drain))
    reload = psub.add_parser(
        "reload", parents=[url], help="switch the pool to another model, atomically"
    )
    reload.add_argument("pool_id", metavar="POOL")
    reload.add_argument("--model", required=True, metavar="REF", help="e.g. pypi:NAME or file:PATH")
    reload.add_argument("--digest", metavar="SHA256", help="expected digest; a mismatch rolls back")
    reload.set_defaults(run=_admin_command(_pools_reload))
    reset = psub.add_parser(
        "reset", parents=[url], help="restart replicas whose circuit breaker is open"
    )
    reset.add_argument("pool_id", metavar="POOL")
    reset.set_defaults(run=_admin_command(_pools_reset))

    policies = sub.add_parser(
        "policies", help="show or reload the admission and placement policies (admin key)"
    )
    polsub = policies.add_subparsers(dest="policies_command", required=True, metavar="ACTION")
    pshow = polsub.add_parser("show", parents=[url, js], help="the running policies and hooks")
    pshow.set_defaults(run=_admin_command(_policies_show))
    preload = polsub.add_parser(
        "reload",
        parents=[url, js],
        help="swap in FILE's policies section atomically (a refused set changes nothing)",
    )
    preload.add_argument(
        "file", metavar="FILE", help="a config file (YAML or JSON) or its policies section"
    )
    preload.set_defaults(run=_admin_command(_policies_reload))

    keys = sub.add_parser("keys", help="make API keys (no daemon needed)")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = ksub.add_parser(
        "new",
        help="print a new key (stdout) and its config entry with only the hash (stderr)",
    )
    new.add_argument("--id", required=True, metavar="ID", help="key id shown in logs")
    who = new.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant", metavar="NAME", help="a tenant key for this tenant")
    who.add_argument("--admin", action="store_true", help="an admin key (control plane)")
    new.set_defaults(run=_keys_new)

    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    completion.set_defaults(run=_completion)
