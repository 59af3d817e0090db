"""Find, start, watch and stop a local ``orchestratord`` for ``llorch demo``.

The daemon runs in its own session (``start_new_session=True``) so the
terminal's Ctrl-C reaches only ``llorch``, which then stops the daemon's whole
process group itself (SIGTERM, a grace period, SIGKILL): no engine process
outlives the demo.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import msgspec
from rich.console import Console
from rich.markup import escape

from .errors import OrchestratordNotFound

__all__ = ["INSTALL_HINT", "Orchestratord", "find_orchestratord", "format_log_line"]

INSTALL_HINT = (
    "orchestratord is not installed. `llorch demo` needs the orchestrator daemon with its "
    "embedded pool manager; install it into this environment with\n"
    "    uv pip install 'llama-orch-orchestratord[embedded]'\n"
    "(or `uv sync` in the llama-orch workspace) and run `llorch demo` again."
)

_log_line = msgspec.json.Decoder()
_DETAIL_KEYS = ("check", "detail", "error", "last_error", "exc_info")


def find_orchestratord() -> str:
    """The ``orchestratord`` next to this Python (same venv) first, then on PATH."""
    beside = Path(sys.executable).parent / "orchestratord"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("orchestratord")
    if found is None:
        raise OrchestratordNotFound(INSTALL_HINT)
    return found


def format_log_line(raw: str) -> str:
    """The ``msg`` of a JSON log line (plus its error detail); other lines verbatim."""
    try:
        doc = _log_line.decode(raw)
    except msgspec.DecodeError:
        return raw
    if not isinstance(doc, dict) or "msg" not in doc:
        return raw
    text = str(doc["msg"])
    level = str(doc.get("level", "")).lower()
    if level in {"warning", "error", "critical"}:
        text = f"{level}: {text}"
    details = [f"{key}={doc[key]}" for key in _DETAIL_KEYS if doc.get(key)]
    return " ".join([text, *details])


def _is_warning(raw: str) -> bool:
    try:
        doc = _log_line.decode(raw)
    except msgspec.DecodeError:
        return True  # not a log record (a traceback, an engine's own output): show it
    level = str(doc.get("level", "")).lower() if isinstance(doc, dict) else ""
    return level in {"warning", "error", "critical"}


class Orchestratord:
    """One supervised ``orchestratord --config FILE`` process."""

    def __init__(self, executable: str, config_path: Path, console: Console) -> None:
        self.command = [executable, "--config", str(config_path)]
        self._console = console
        self._proc: asyncio.subprocess.Process | None = None
        self._held: list[str] | None = None
        self._quiet = False
        self._pumps: list[asyncio.Task[None]] = []
        self._tail: deque[str] = deque(maxlen=30)
        self.exited: asyncio.Future[int] | None = None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def output_tail(self) -> str:
        return "\n".join(self._tail)

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=1 << 20,  # log lines with tracebacks can exceed the 64 KiB default
        )
        # Last resort if the event loop is torn down before stop() runs.
        atexit.register(self.kill_now)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(self._proc.stdout), name="orchestratord-stdout"),
            asyncio.create_task(self._pump(self._proc.stderr), name="orchestratord-stderr"),
        ]
        self.exited = asyncio.ensure_future(self._proc.wait())

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the limit: show what we have
                line = await stream.read(1 << 16)
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if text:
                self._tail.append(text)
                if self._quiet and not _is_warning(text):
                    continue  # kept in the tail for an error report, not shown
                if self._held is not None:
                    self._held.append(text)
                else:
                    self._show(text)

    def _show(self, text: str) -> None:
        self._console.print(f"[dim]\\[orchestratord][/dim] {escape(format_log_line(text))}")

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Show only warnings and errors of the daemon meanwhile (the demo's live view
        would otherwise scroll away under one INFO line per task)."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    @contextlib.contextmanager
    def hold_logs(self) -> Iterator[None]:
        """Keep the daemon's log lines back while a stream is printed, so they never
        land in the middle of the streamed text; show them afterwards, in order."""
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            for text in held:
                self._show(text)

    async def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM the process group, wait ``grace_s``, then SIGKILL it."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            self._console.print("[llorch] stopping orchestratord ...", markup=False)
            self._signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):  # ORCH-2817: never drops a cancel
                    await proc.wait()
            except TimeoutError:
                self._console.print(
                    f"[llorch] orchestratord did not stop within {grace_s:g} s; killing it",
                    markup=False,
                )
                self._signal(signal.SIGKILL)
                await proc.wait()
        else:
            self._signal(signal.SIGKILL)  # the leader is gone; reap anything it left behind
        for pump in self._pumps:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):  # ORCH-2817
                    await pump
        atexit.unregister(self.kill_now)
        return proc.returncode

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def kill_now(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._signal(signal.SIGKILL)
