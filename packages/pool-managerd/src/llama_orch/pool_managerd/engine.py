"""One engine process: command construction, start, health wait, stop.

Processes are started in their own process group (``start_new_session``) so
that stopping one stops everything it spawned, by PID, never by name
(ORCH-POOL-3010). Stopping sends the engine's stop signal (SIGTERM; PyTriton:
SIGINT) to the group, waits, then SIGKILL. A child that left the group (vLLM's
EngineCore was once seen to outlive its group's leader) is still found: by the
session the engine leads, and by the descendants recorded while it ran
(ORCH-POOL-3037).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .errors import ReplicaStartError

log = logging.getLogger(__name__)

__all__ = [
    "EngineProcess",
    "LlamaServerSpec",
    "descendants",
    "free_port",
    "process_table",
    "session_members",
    "wait_healthy",
]


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the parent dies (Linux).

    Engines run in their own session so they can be stopped as a group; this
    makes sure a SIGKILLed orchestratord/pool-managerd does not leave them
    running either (ORCH-POOL-3010).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: group stop on shutdown still applies


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def process_table() -> dict[int, tuple[int, int, int]]:
    """``pid -> (ppid, session id, start time)`` of every live process, from
    ``/proc`` (Linux; the start time in clock ticks tells a reused pid apart).
    Zombies are left out: they run nothing and cannot be killed."""
    table: dict[int, tuple[int, int, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        # Fields after the command (which may contain spaces) in parentheses:
        # state ppid pgrp session ... starttime (field 22 of stat(5)).
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) >= 20 and rest[0] != "Z":
            table[int(entry)] = (int(rest[1]), int(rest[3]), int(rest[19]))
    return table


def session_members(sid: int) -> set[int]:
    """Processes of session ``sid`` (an engine leads its own session)."""
    return {pid for pid, (_, session, _) in process_table().items() if session == sid}


def descendants(root: int) -> set[tuple[int, int]]:
    """``(pid, start time)`` of every descendant of ``root``."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[tuple[int, int]] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if (child, table[child][2]) not in found:
                found.add((child, table[child][2]))
                todo.append(child)
    return found


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _until_exited(pids: set[int], timeout: float) -> set[int]:
    """Wait until every one of ``pids`` has exited; the ones still running at
    ``timeout`` are returned. SIGKILL is delivered asynchronously and a large
    process (vLLM's EngineCore) takes a while to unmap its memory: killed is not
    yet gone (ORCH-POOL-3038). A pidfd (Linux) becomes readable when its
    process exits, so this waits on the loop's selector, not on a poll."""
    loop = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future[None]] = {}
    fds: list[int] = []
    try:
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # already gone (and reaped)
            fds.append(fd)
            fut: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _resolve, fut)
            waiting[pid] = fut
        if waiting:
            await asyncio.wait(waiting.values(), timeout=timeout)
        return {pid for pid, fut in waiting.items() if not fut.done()}
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


@dataclass(frozen=True, slots=True)
class LlamaServerSpec:
    """Everything needed to launch one ``llama-server`` replica."""

    binary: Path
    model_path: Path
    port: int
    host: str = "127.0.0.1"
    slots: int = 1
    ctx_per_slot: int = 2048
    threads: int | None = None
    continuous_batching: bool = True
    devices: str | None = None
    alias: str | None = None
    # ORCH-9211: serve /v1/embeddings too (mean pooling: one vector per input)
    embeddings: bool = False
    # ORCH-2370: where llama-server saves and restores slot caches (ORCH-2369)
    slot_save_path: Path | None = None
    extra_flags: tuple[str, ...] = ()

    def command(self) -> list[str]:
        cmd = [
            str(self.binary),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "-m",
            str(self.model_path),
            # -c is the total KV size; llama-server splits it across slots.
            "-c",
            str(self.ctx_per_slot * self.slots),
            "-np",
            str(self.slots),
            "--metrics",
            "--slots",
        ]
        if self.threads is not None:
            cmd += ["--threads", str(self.threads)]
        if not self.continuous_batching:
            cmd.append("-nocb")
        if self.alias:
            cmd += ["--alias", self.alias]
        if self.embeddings:
            cmd += ["--embeddings", "--pooling", "mean"]
        if self.slot_save_path is not None:
            cmd += ["--slot-save-path", str(self.slot_save_path)]
        cmd += list(self.extra_flags)
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Device masks are applied, never crossed (ORCH-POOL-3006): an empty
        # mask hides every GPU from the engine.
        env["CUDA_VISIBLE_DEVICES"] = self.devices or ""
        return env

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class EngineProcess:
    """A running engine child process and the tail of its output."""

    command: list[str]
    env: dict[str, str] | None = None
    name: str = "engine"
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None
    scratch: Path | None = None  # removed once the engine has stopped
    _known: set[tuple[int, int]] = field(default_factory=set)  # (pid, start) seen running
    _proc: asyncio.subprocess.Process | None = None
    _tail: deque[str] = field(default_factory=lambda: deque(maxlen=60))
    _reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    def output_tail(self) -> str:
        return "\n".join(self._tail)

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self.command,
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._reader = asyncio.create_task(self._read_output(), name=f"{self.name}-output")

    async def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            self._tail.append(line.decode(errors="replace").rstrip())

    async def wait(self) -> int:
        """The leader's exit status, as soon as it has exited.

        Not ``Process.wait()``: asyncio resolves that only once every pipe is
        closed too, and a child that outlives the leader (vLLM's EngineCore after
        a kill -9 of the API server) holds stdout open, so a crash would look
        like a hang (ORCH-POOL-3037). ``returncode`` is set when the child
        watcher reaps the leader; nothing to await for that, hence the poll.
        """
        proc = self._proc
        assert proc is not None
        while proc.returncode is None:
            await asyncio.sleep(0.05)
        return proc.returncode

    def remember_children(self) -> None:
        """Record the engine's descendants now (after start-up, while the leader
        lives): one that leaves the group and the session is still stopped."""
        if self._proc is not None and self._proc.returncode is None:
            self._known |= descendants(self._proc.pid)

    def _sweep(self) -> set[int]:
        """SIGKILL what is left of the engine; returns the pids signalled."""
        assert self._proc is not None
        table = process_table()
        sid = self._proc.pid
        left = {pid for pid, (_, session, _) in table.items() if session == sid}
        # A recorded descendant only if its pid was not reused since (same start).
        left |= {pid for pid, start in self._known if pid in table and table[pid][2] == start}
        for pid in left:
            _kill(pid)
        return left

    async def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the process group: the stop signal, then SIGKILL after ``timeout``;
        then whatever is left of the engine's session and recorded descendants."""
        proc = self._proc
        if proc is None:
            self._remove_scratch()
            return None
        if proc.returncode is None:
            self.remember_children()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, self.stop_signal)
            try:
                async with asyncio.timeout(timeout):  # ORCH-2817: never drops a cancel
                    await self.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await self.wait()
        # A group's leader may be gone while members live on (kill -9 of the
        # leader), and a member may have left the group: sweep both.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        # Return only once they are gone: the caller reports the engine stopped.
        if still := await _until_exited(self._sweep(), timeout=10.0):
            log.warning("%s: processes %s outlived SIGKILL by 10 s", self.name, sorted(still))
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(2.0):  # ORCH-2817
                    await self._reader
        self._remove_scratch()
        return proc.returncode

    def _remove_scratch(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    async def kill(self) -> int | None:
        """SIGKILL the whole group at once (also works on a SIGSTOPped engine)."""
        self.kill_now()
        return await self.stop(timeout=5.0)

    def kill_now(self) -> None:
        """Synchronous last resort (atexit, signal paths)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._sweep()


async def wait_healthy(
    base_url: str, proc: EngineProcess, *, timeout: float, path: str = "/health"
) -> float:
    """Poll ``path`` until it answers 200; fail fast when the process exits."""
    started = time.monotonic()
    deadline = started + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
        while True:
            if proc.returncode is not None:
                raise ReplicaStartError(
                    f"{proc.name} exited with {proc.returncode} before becoming healthy:\n"
                    + proc.output_tail()
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(base_url + path) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            if time.monotonic() > deadline:
                raise ReplicaStartError(
                    f"{proc.name} not healthy after {timeout:.0f}s:\n" + proc.output_tail()
                )
            await asyncio.sleep(0.1)
