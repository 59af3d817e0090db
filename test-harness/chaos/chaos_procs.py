"""Processes of a chaos run: llama-server engines, a remote pool-managerd, and the
helpers that stop them by process group (never by name). ORCH-6100, ORCH-6114."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from chaos_cancel import parse_engine_log
from llama_orch.pool_managerd.engine import LlamaServerSpec, die_with_parent, free_port

SMOLLM2 = "pypi:smollm2-135m-instruct-q4_1"
POOL = "chaos"
STREAM_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 90.0
# `-b 8 -ub 8`: llama-server handles a cancel (a closed connection) between two
# batches of its loop, and (with the adapter's `return_progress`, ORCH-3028) its HTTP
# thread sees the close after the batch in progress. Prefill runs at ~110 tokens/s
# per engine thread here, so a batch of n tokens holds a canceled slot up to n/110 s:
# measured 2026-12-02 on an idle machine, cancel during a ~280-token prefill ->
# slot free max 706 ms with 64-token batches, 389 ms with 32, 183 ms with 16
# (prefill of the same prompt 11 % slower with 16 than with 64). A CI run with
# 64-token batches and no progress chunks had p99 438.6 ms (2026-12-02 19:32); one
# with 16-token batches 250.1 ms (2026-12-03 21:25, a CI machine slower than ours),
# so 8-token batches halve the term that a slower machine stretches.
ENGINE_FLAGS = tuple(os.environ.get("CHAOS_ENGINE_FLAGS", "--no-repack -b 8 -ub 8").split())
# ORCH-6242: the cancel -> slot-free figure is read from the engine's log, its slot lines
# ("launch_slot_ ... processing task", "release ... stop processing") with the time
# since the engine's start; said explicitly, not left to the build's defaults.
LOG_FLAGS = ("--log-timestamps", "--log-prefix", "--log-colors", "off")


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now() -> float:
    return time.time()


def replica_id(index: int) -> str:
    return f"{POOL}-e{index}"


def killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text(errors="replace").rsplit(")", 1)[-1].split()
    except OSError:
        return False
    return bool(state) and state[0] != "Z"


def prompt_len(slot: dict[str, Any]) -> int | None:
    """The prompt length of the request a busy slot runs: llama-server's
    ``n_prompt_tokens`` counts the tokens decoded so far too."""
    if not slot.get("is_processing"):
        return None
    with contextlib.suppress(KeyError, IndexError, TypeError):
        return int(slot["n_prompt_tokens"]) - int(slot["next_token"][0]["n_decoded"])
    return None


class Engine:
    """One llama-server replica; restartable on a new port after a kill."""

    def __init__(self, index: int, binary: Path, model: Path, slots: int, logdir: Path) -> None:
        self.index, self.binary, self.model, self.slots, self.logdir = (
            index,
            binary,
            model,
            slots,
            logdir,
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.incarnation = 0
        self.counters: list[dict[str, float]] = []  # token counters of past incarnations
        # per incarnation: its log, when it was spawned and answered /health (our clock)
        self.runs: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.port = free_port()
        spec = LlamaServerSpec(
            binary=self.binary,
            model_path=self.model,
            port=self.port,
            slots=self.slots,
            ctx_per_slot=512,
            threads=1,
            # The cached llama-server is built with GGML_NATIVE; on these VMs the CPU
            # advertises AMX but the kernel traps its tile instructions (SIGILL/GPF in
            # libggml-cpu during warmup). Weight repacking is what selects the AMX
            # kernels; chaos does not measure it, so it is off.
            extra_flags=(*ENGINE_FLAGS, *LOG_FLAGS),
        )
        self.incarnation += 1
        log_path = self.logdir / f"engine{self.index}-{self.incarnation}.log"
        run: dict[str, Any] = {"incarnation": self.incarnation, "log": str(log_path)}
        self.runs.append(run)
        with log_path.open("wb") as logf:
            run["t_spawn"] = now()  # the log's clock starts after this
            self.proc = subprocess.Popen(
                spec.command(),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=spec.env(),
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine {self.index} exited {self.proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(self.url + "/health", timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200:
                        run["t_ready"] = now()  # the log's clock started before this
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"engine {self.index} not healthy in 120 s")

    def slot_logs(self) -> list[dict[str, Any]]:
        """Each incarnation's spawn and ready times and the slot lines of its log
        (``chaos_cancel.parse_engine_log``): read once the engine has stopped."""
        out = []
        for run in self.runs:
            text = Path(run["log"]).read_text(errors="replace")
            out.append(
                {k: v for k, v in run.items() if k != "log"} | {"tasks": parse_engine_log(text)}
            )
        return out

    async def token_counters(self, http: aiohttp.ClientSession) -> dict[str, float]:
        out: dict[str, float] = {}
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(self.url + "/metrics", timeout=aiohttp.ClientTimeout(3)) as r:
                for line in (await r.text()).splitlines():
                    if line.startswith("llamacpp:tokens_predicted_total") or line.startswith(
                        "llamacpp:prompt_tokens_total"
                    ):
                        name, val = line.split()[:2]
                        out[name] = float(val)
        return out

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            killpg(self.proc.pid, signal.SIGCONT)
            killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class PoolManagerd:
    """A remote ``pool-managerd`` daemon serving the pool (ORCH-6114): its own process
    group; restartable with the same config (the same port) after a kill -9. Its
    engines have their own groups (ORCH-POOL-3010): every PID it ever reported is
    recorded and swept at the end."""

    def __init__(self, workdir: Path, binary: Path, slots: int, replicas: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_file = workdir / "pm-token"
        self.token_file.write_text(f"chaos-{uuid.uuid4().hex}\n")
        self.token = self.token_file.read_text().strip()
        self.config = workdir / "pool-managerd.json"
        pool = {
            "id": POOL,
            "engine": "llamacpp-http",
            "model": SMOLLM2,
            "engine_binary": str(binary),
            "replicas": replicas,
            "slots": slots,
            "ctx": 512,
            "threads": 1,
            "engine_flags": list(ENGINE_FLAGS),
            # a storm opens the breaker after 2 failures; restarts come back fast
            "restart_backoff_initial_s": 0.2,
            "restart_backoff_max_s": 1.0,
            "breaker_failures": 2,
            "breaker_window_s": 60.0,
            "health_probe_interval_s": 0.5,
            "health_probe_timeout_s": 2.0,
            "health_probe_failures": 3,
        }
        doc = {
            "allow_cpu_inference": True,
            "pool_managerd": {"host": "127.0.0.1", "port": self.port,
                              "token_file": str(self.token_file)},
            "pools": [pool],
        }  # fmt: skip
        self.config.write_text(json.dumps(doc, indent=1))
        self.proc: subprocess.Popen[bytes] | None = None
        self.engine_pids: set[int] = set()
        self.samples: list[dict[str, Any]] = []  # replica states over time

    def start(self) -> None:
        exe = Path(sys.executable).parent / "pool-managerd"
        with (self.workdir / "pool-managerd.log").open("ab") as logf:
            self.proc = subprocess.Popen(
                [str(exe), "--config", str(self.config)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    async def replicas(self, http: aiohttp.ClientSession) -> list[dict[str, Any]] | None:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            async with http.get(
                self.url + "/v1/replicas",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=aiohttp.ClientTimeout(3),
            ) as r:
                if r.status == 200:
                    reps: list[dict[str, Any]] = (await r.json())["replicas"]
                    for x in reps:
                        if x.get("pid"):
                            self.engine_pids.add(int(x["pid"]))
                    return reps
        return None

    async def monitor(self, http: aiohttp.ClientSession, stopping: asyncio.Event) -> None:
        last: Any = None
        while not stopping.is_set():
            reps = await self.replicas(http)
            if reps is not None:
                view = [
                    {k: x.get(k) for k in ("replica_id", "status", "pid", "circuit_open",
                                           "restarts", "last_error")}
                    for x in reps
                ]  # fmt: skip
                if view != last:
                    self.samples.append({"t": time.time(), "replicas": view})
                    last = view
            await asyncio.sleep(0.1)  # a remote daemon: poll its registry, bounded

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            killpg(self.proc.pid, signal.SIGCONT)
            killpg(self.proc.pid, signal.SIGTERM)  # it stops its engines itself
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in self.engine_pids:  # engines have their own groups
            killpg(pid, signal.SIGKILL)
