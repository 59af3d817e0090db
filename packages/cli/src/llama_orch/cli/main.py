"""``llorch``: submit and cancel tasks, operate a daemon, and run a complete local demo.

Exit codes: 0 success, 1 failure (connection, server or engine error),
2 client error (a 4xx answer, invalid arguments, orchestratord missing),
3 backpressure (429; the Retry-After hint is printed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

from llama_orch.core.config import PRIORITIES
from rich.markup import escape

from ._render import follow_task, print_summary, stderr_console
from .client import DEFAULT_URL, OrchClient
from .errors import EXIT_INTERRUPTED, ClientError, exit_code_for_error_code
from .models_cmd import add_model_commands
from .ops import API_KEY_ENV, add_operator_commands, api_key, report_failure

__all__ = ["build_parser", "main", "run_cancel", "run_submit"]

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


DESCRIPTION = """\
llorch talks to a llama-orch orchestrator (orchestratord).

  Try it:     llorch demo        (starts a local daemon with a small real model)
  Use it:     llorch submit "Write a limerick about queues" --chat
  Operate it: llorch status | top | tasks | sessions | pools   (admin key)
"""

EPILOG = f"""\
The daemon's URL comes from --url, else $LLORCH_URL, else {DEFAULT_URL}.
The API key is read from ${API_KEY_ENV} (never from a flag: argv is public);
submit and cancel need a tenant key, the operator commands an admin key.
Make keys with `llorch keys new`; `orchestratord init` writes a starter config.
Exit codes: 0 ok, 1 failure, 2 client error, 3 backpressure (429), 130 interrupted.
Shell completion: eval "$(llorch completion bash)".
"""


def task_fields(args: argparse.Namespace, prompt: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"priority": args.priority}
    if args.chat:
        fields |= {"workload": "chat", "messages": [{"role": "user", "content": prompt}]}
    else:
        fields["prompt"] = prompt
    optional = {
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "temperature": args.temperature,
        "pool_id": args.pool,
    }
    fields |= {key: value for key, value in optional.items() if value is not None}
    return fields


async def run_submit(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """``llorch submit``: submit, stream tokens live, print a summary (ORCH-5001)."""
    console = stderr_console()
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    try:
        async with OrchClient(args.url, api_key=api_key(), max_retries=args.retries) as orch:
            submitted_at = time.monotonic()
            if args.no_stream:
                accepted = await orch.submit(**task_fields(args, prompt))
                print(accepted.task_id, file=out or sys.stdout)
                console.print(
                    f"accepted at queue position {accepted.queue_position}, "
                    f"predicted start in {accepted.predicted_start_ms} ms"
                )
                return 0
            # one request admits and streams (ORCH-2713)
            task = await orch.submit_stream(**task_fields(args, prompt))
            outcome = await follow_task(
                orch, task.task_id, submitted_at, out=out, events=task.events()
            )
    except ClientError as exc:
        return report_failure(exc, args.url)
    print_summary(console, outcome)
    if outcome.error is not None:
        return exit_code_for_error_code(outcome.error.code)
    return 0


async def run_cancel(args: argparse.Namespace) -> int:
    """``llorch cancel``: ``POST /v1/tasks/{id}/cancel`` (ORCH-5002)."""
    try:
        async with OrchClient(args.url, api_key=api_key()) as orch:
            await orch.cancel(args.task_id)
    except ClientError as exc:
        return report_failure(exc, args.url)
    stderr_console().print(f"cancel sent for task {escape(args.task_id)}")
    return 0


async def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo  # imported lazily: only `demo` needs subprocess code

    return await demo(model=args.model, port=args.port, keep_config=args.keep_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llorch",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--url",
        default=os.environ.get("LLORCH_URL", DEFAULT_URL),
        help="orchestratord base URL (env LLORCH_URL, default %(default)s)",
    )

    submit = sub.add_parser(
        "submit", parents=[url], help="submit a task and stream its tokens live"
    )
    submit.add_argument("prompt", metavar="PROMPT", help="prompt text, or - to read stdin")
    submit.add_argument("--chat", action="store_true", help="send as a chat user message")
    submit.add_argument("--max-tokens", type=int, metavar="N")
    submit.add_argument("--seed", type=int, metavar="N")
    submit.add_argument("--temperature", type=float, metavar="F")
    submit.add_argument("--priority", choices=PRIORITIES, default=PRIORITIES[0])
    submit.add_argument("--pool", metavar="ID", help="pool id (default: the server's choice)")
    submit.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="after a 429/503 that names a delay, wait it and submit again, N times at most"
        " (default 2; the server keeps the place of a client that comes back in time)",
    )
    submit.add_argument(
        "--no-stream", action="store_true", help="print the task id and return at once"
    )
    submit.set_defaults(run=run_submit)

    cancel = sub.add_parser("cancel", parents=[url], help="cancel a queued or running task")
    cancel.add_argument("task_id", metavar="ID")
    cancel.set_defaults(run=run_cancel)

    demo = sub.add_parser(
        "demo",
        help="see llama-orch at work: three tenants, cancel, backpressure, then a Haiku",
        description="Start a local orchestratord with a small real model, show three "
        "tenants sharing it by weight and priority, a cancel, an overload answered with "
        "Retry-After, then stream the Haiku task; stops everything it started.",
    )
    demo.add_argument(
        "--model",
        default="pypi:qwen2.5-coder-0.5b-instruct-q4_k_m",
        metavar="REF",
        help="model reference for the demo pool (default %(default)s)",
    )
    demo.add_argument("--port", type=int, default=0, metavar="N", help="default: a free port")
    demo.add_argument(
        "--keep-config", action="store_true", help="keep the generated config file and print it"
    )
    demo.set_defaults(run=run_demo)
    add_operator_commands(sub, url)
    add_model_commands(sub, url)  # issue #18
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Command = args.run
    try:
        return asyncio.run(command(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
