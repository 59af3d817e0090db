"""Chaos and load runner: real llama-server engines behind fault proxies, orchestratord
as a daemon, a seeded load, faults on a schedule, then the invariant check and report.

    uv run --frozen python test-harness/chaos/chaos_run.py --profile ci --seed 7
    nohup uv run --frozen python test-harness/chaos/chaos_run.py --long > chaos-long.log 2>&1 &

Topology: N engines (SmolLM2-135M, a few slots each) ← one FaultProxy each ←
orchestratord (pool ``chaos``, ``endpoints:`` = the proxies, auth with one key
per tenant) ← the load clients. Every process is started in its own process
group and stopped by PID group in a ``finally`` (never by name). ORCH-6100, ORCH-6104.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import chaos_check  # noqa: E402
import chaos_plan  # noqa: E402
import chaos_report  # noqa: E402
from chaos_proxy import FaultProxy  # noqa: E402
from llama_orch.core.sse import SSEParser  # noqa: E402
from llama_orch.pool_managerd.engine import LlamaServerSpec, die_with_parent, free_port  # noqa: E402
from llama_orch.pool_managerd.provision import provision_llama_server, provision_model  # noqa: E402

SMOLLM2 = "pypi:smollm2-135m-instruct-q4_1"
POOL = "chaos"
STREAM_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 90.0
# `-b 16 -ub 16`: llama-server handles a cancel (a closed connection) between two
# batches of its loop, and (with the adapter's `return_progress`, ORCH-3028) its HTTP
# thread sees the close after the batch in progress. Prefill runs at ~110 tokens/s
# per engine thread here, so a batch of n tokens holds a canceled slot up to n/110 s:
# measured 2026-12-02 on an idle machine, cancel during a ~280-token prefill ->
# slot free max 706 ms with 64-token batches, 389 ms with 32, 183 ms with 16
# (prefill of the same prompt 11 % slower with 16 than with 64). A CI run with
# 64-token batches and no progress chunks had p99 438.6 ms (2026-12-02 19:32).
ENGINE_FLAGS = tuple(os.environ.get("CHAOS_ENGINE_FLAGS", "--no-repack -b 16 -ub 16").split())


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _pid_alive(pid: int) -> bool:
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


def _prompt_len(slot: dict[str, Any]) -> int | None:
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
            extra_flags=ENGINE_FLAGS,
        )
        self.incarnation += 1
        with (self.logdir / f"engine{self.index}-{self.incarnation}.log").open("wb") as logf:
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
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"engine {self.index} not healthy in 120 s")

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
            _killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGCONT)
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
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
            _killpg(self.proc.pid, signal.SIGCONT)
            _killpg(self.proc.pid, signal.SIGTERM)  # it stops its engines itself
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in self.engine_pids:  # engines have their own groups
            _killpg(pid, signal.SIGKILL)


class Runner:
    def __init__(self, prof: chaos_plan.Profile, seed: int, outdir: Path, workdir: Path) -> None:
        self.prof, self.seed = prof, seed
        self.plan = chaos_plan.make_plan(prof, seed)
        self.outdir, self.workdir = outdir, workdir
        self.engines: list[Engine] = []
        self.proxies: list[FaultProxy] = []
        self.orch: subprocess.Popen[bytes] | None = None
        self.orch_url = ""
        self.orch_config = workdir / "orchestratord.json"
        self.orch_log = workdir / "orchestratord.log"
        self.orch_restarts = 0
        self.store_server: Any = None  # llama_orch.state_valkey.EmbeddedServer
        self.pm: PoolManagerd | None = None
        self.store_dir = workdir / "valkey"
        self.admin_key = f"llo_chaos-admin-{'k' * 40}"
        self.keys = {t.name: f"llo_chaos-{t.name}-{'k' * 40}" for t in prof.tenants}
        self.records: dict[int, dict[str, Any]] = {}
        self.faults_done: list[dict[str, Any]] = []
        self.slot_samples: dict[str, list[dict[str, Any]]] = {}
        self.sessions: dict[tuple[str, int], asyncio.Lock] = {}
        self.live: dict[int, list[Any]] = {}  # arrival -> [replica_id, tokens received]
        self.t0 = 0.0
        self.stopping = asyncio.Event()

    # ----------------------------------------------------------------- topology

    async def start(self, http: aiohttp.ClientSession) -> None:
        binary = provision_llama_server(progress=log)
        model_path, digest = provision_model(SMOLLM2, progress=log)
        if self.prof.pool_managerd:
            self.pm = PoolManagerd(self.workdir, binary.path, self.prof.slots, self.prof.engines)
            self.pm.start()
        else:
            for i in range(self.prof.engines):
                e = Engine(i, binary.path, model_path, self.prof.slots, self.workdir)
                self.engines.append(e)
            await asyncio.gather(*(e.start(http) for e in self.engines))
            for e in self.engines:
                p = FaultProxy(e.index, e.port)
                await p.start()
                self.proxies.append(p)
        from llama_orch.orchestratord.auth import hash_key

        port = free_port()
        cfg = {
            "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 2.0},
            "auth": {
                "enabled": True,
                "public_metrics": True,
                "public_health": True,
                "keys": [
                    {"id": f"key-{t}", "role": "tenant", "tenant": t, "hash": hash_key(k)}
                    for t, k in self.keys.items()
                ]
                + [{"id": "key-admin", "role": "admin", "hash": hash_key(self.admin_key)}],
            },
            "admission": {"queue_capacity": self.prof.queue_capacity},
            "scheduling": {
                "tenants": {
                    t.name: {"weight": t.weight}
                    | ({"max_concurrent": t.max_concurrent} if t.max_concurrent else {})
                    for t in self.prof.tenants
                }
            },
            "observability": {"self_test": False, "engine_scrape_interval_s": 1.0},
            "allow_cpu_inference": True,
            "pools": [
                {
                    "id": POOL,
                    "engine": "llamacpp-http",
                    "model": SMOLLM2,
                    "model_digest": digest,
                    "endpoints": [f"http://127.0.0.1:{p.port}" for p in self.proxies],
                    # The profile measures kill -9 -> WORKER_RESET of in-flight tasks
                    # (ORCH-6104); migration (ORCH-2330) is proven in its own tests.
                    "migration_limit": 0,
                    "adapter_options": {
                        "idle_timeout_s": self.prof.idle_timeout_s,
                        "connect_timeout_s": 2.0,
                        "request_timeout_s": 5.0,
                    },
                }
            ],
        }
        if self.pm is not None:
            # ORCH-6114: the pool is the remote pool-managerd's (no endpoints, no proxies)
            pool = cfg["pools"][0]
            for k in ("endpoints", "model_digest"):
                pool.pop(k)
            pool |= {"replicas": self.prof.engines, "slots": self.prof.slots, "ctx": 512}
            cfg["pool_managers"] = [
                {
                    "name": "pm",
                    "url": self.pm.url,
                    "token_file": str(self.pm.token_file),
                    "pools": [POOL],
                    "lease_ttl_s": 1.5,
                }
            ]
            # queued tasks of a pool with no Ready replica end POOL_UNREADY after this
            cfg["scheduling"]["waiting"] = {"unready_timeout_s": 6.0}
        if self.prof.store:
            # ORCH-6110: a harness-owned valkey-server with its AOF under the run's
            # directory, on a fixed port so that a restart after kill -9 keeps the URL
            from llama_orch.state_valkey import EmbeddedServer

            # its data outside the repository (scratch; the AOF holds the llorch library,
            # whose ORCH- ids tools/spec_extract.py would count as citations)
            self.store_dir = Path(tempfile.mkdtemp(prefix="chaos-valkey-"))
            self.store_server = EmbeddedServer(self.store_dir, port=free_port())
            url = self.store_server.start()
            cfg["state"] = {"backend": "valkey", "url": url, "lease_ms": self.prof.lease_ms}
        self.orch_config = self.workdir / "orchestratord.json"
        self.orch_config.write_text(json.dumps(cfg, indent=1))
        self.orch_log = self.workdir / "orchestratord.log"
        self.orch_url = f"http://127.0.0.1:{port}"
        await self.start_orch(http)

    async def start_orch(self, http: aiohttp.ClientSession) -> float:
        """Start orchestratord (again, after a kill: the same config, the log appended);
        the seconds until its pool had every replica Ready."""
        t0 = time.monotonic()
        exe = Path(sys.executable).parent / "orchestratord"
        with self.orch_log.open("ab") as logf:
            self.orch = subprocess.Popen(
                [str(exe), "--config", str(self.orch_config)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.orch.poll() is not None:
                raise RuntimeError(
                    f"orchestratord exited {self.orch.returncode}:\n"
                    f"{self.orch_log.read_text()[-3000:]}"
                )
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.get(self.orch_url + f"/v1/pools/{POOL}/health") as r:
                    body = await r.json()
                    ready = [x for x in body.get("replicas", []) if x.get("status") == "ready"]
                    if len(ready) == self.prof.engines:
                        return time.monotonic() - t0
            await asyncio.sleep(0.1)  # a child process has no event to await: poll, bounded
        pm_log = self.workdir / "pool-managerd.log"
        tail = pm_log.read_text(errors="replace")[-2000:] if pm_log.is_file() else ""
        raise RuntimeError(f"orchestratord pool not ready in 120 s\n{tail}")

    async def stop(self) -> None:
        if self.orch is not None and self.orch.poll() is None:
            _killpg(self.orch.pid, signal.SIGTERM)
            try:
                self.orch.wait(15)
            except subprocess.TimeoutExpired:
                _killpg(self.orch.pid, signal.SIGKILL)
                self.orch.wait()
        for p in self.proxies:
            await p.close()
        for e in self.engines:
            e.stop()
        if self.pm is not None:
            self.pm.stop()
        if self.store_server is not None:
            if self.store_server.proc is not None:  # a paused store cannot take SIGTERM
                _killpg(self.store_server.proc.pid, signal.SIGCONT)
            self.store_server.stop()  # by PID (its process group), even after a restart
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def now(self) -> float:
        return time.time()

    # ----------------------------------------------------------------- monitors

    async def monitor_slots(self, http: aiohttp.ClientSession, e: Engine) -> None:
        series = self.slot_samples.setdefault(str(e.index), [])
        last: Any = None
        while not self.stopping.is_set():
            t_sent = self.now()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, TypeError):
                # A poll waits for the engine's current batch step; a longer timeout keeps
                # the answer right after a slow step instead of a gap in the series.
                async with http.get(e.url + "/slots", timeout=aiohttp.ClientTimeout(5)) as r:
                    body = await r.json()
                t = self.now()
                if not isinstance(body, list):  # an error answer (engine busy or stopping)
                    raise ValueError(str(body)[:200])
                slots = [
                    {
                        "id": s.get("id"),
                        "is_processing": bool(s.get("is_processing")),
                        "id_task": s.get("id_task") if s.get("is_processing") else None,
                        "prompt_len": _prompt_len(s),
                    }
                    for s in body
                ]
                if slots != last:
                    # the state was seen between t_sent and t (an upper bound)
                    series.append({"t": t, "t_sent": t_sent, "slots": slots})
                    last = slots
            await asyncio.sleep(0.04)

    # ----------------------------------------------------------------- faults

    def replica_id(self, index: int) -> str:
        return f"{POOL}-e{index}"

    async def inject(self, http: aiohttp.ClientSession, f: chaos_plan.Fault) -> None:
        await asyncio.sleep(max(0.0, self.t0 + f.at_s - time.monotonic()))
        if f.kind in chaos_plan.STORE_FAULT_KINDS:
            await self.inject_store(http, f)
            return
        if f.kind in chaos_plan.POOL_FAULT_KINDS:
            await self.inject_pool(http, f)
            return
        e, p = self.engines[f.target], self.proxies[f.target]
        rec: dict[str, Any] = {
            "n": f.n,
            "kind": f.kind,
            "target": f.target,
            "replica_id": self.replica_id(f.target),
            "planned_at_s": f.at_s,
        }
        if f.kind in ("engine_kill9", "engine_sigstop", "net_blackhole", "net_reset"):
            # Inject while a task streams tokens from the target, so the fault hits
            # work (waits at most 10 s; the report says when it was injected).
            rid = self.replica_id(f.target)
            for _ in range(200):
                if any(v[0] == rid and v[1] > 0 for v in self.live.values()):
                    break
                await asyncio.sleep(0.05)
        rec["t_start"] = self.now()
        rec["at_s"] = round(time.monotonic() - self.t0, 3)
        log(f"fault {f.n}: {f.kind} on engine {f.target} at {rec['at_s']}s")
        if f.kind == "engine_kill9":
            e.signal(signal.SIGKILL)
            assert e.proc is not None
            e.proc.wait()
            await asyncio.sleep(f.duration_s)
            await e.start(http)
            p.upstream_port = e.port
            rec["t_end"] = self.now()
        elif f.kind == "engine_sigstop":
            e.signal(signal.SIGSTOP)
            await asyncio.sleep(f.duration_s)
            e.signal(signal.SIGCONT)
            rec["t_end"] = self.now()
        elif f.kind == "net_blackhole":
            p.blackhole(True)
            await asyncio.sleep(f.duration_s)
            p.blackhole(False)
            rec["t_end"] = self.now()
        elif f.kind == "net_latency":
            p.latency(f.latency_ms)
            await asyncio.sleep(f.duration_s)
            p.latency(0)
            rec["t_end"] = self.now()
        elif f.kind == "net_reset":
            p.reset()
            rec["t_end"] = self.now()
        elif f.kind == "overload":
            rec["t_end"] = rec["t_start"] + f.duration_s
            rec["burst"] = f.burst
        self.faults_done.append(rec)

    async def inject_store(self, http: aiohttp.ClientSession, f: chaos_plan.Fault) -> None:
        """ORCH-6110: the store killed (restarted on its AOF, same port), the store
        paused, orchestratord killed and restarted with the same config. Waits (at most
        ``STORE_FAULT_WAIT_S``) for a task streaming tokens, so the fault hits running work."""
        for _ in range(int(chaos_plan.STORE_FAULT_WAIT_S / 0.05)):
            if any(v[1] > 0 for v in self.live.values()):
                break
            await asyncio.sleep(0.05)
        rec: dict[str, Any] = {
            "n": f.n,
            "kind": f.kind,
            "target": None,
            "replica_id": None,
            "planned_at_s": f.at_s,
            "in_flight": sorted(self.live),
        }
        rec["t_start"] = self.now()
        rec["at_s"] = round(time.monotonic() - self.t0, 3)
        log(f"fault {f.n}: {f.kind} at {rec['at_s']}s ({len(self.live)} tasks streaming)")
        srv = self.store_server
        if f.kind == "store_kill9":
            assert srv is not None and srv.proc is not None
            _killpg(srv.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(srv.proc.wait)
            if srv.proc.stderr is not None:  # the dead server's pipe
                srv.proc.stderr.close()
            await asyncio.sleep(f.duration_s)
            from llama_orch.state_valkey import EmbeddedServer

            self.store_server = EmbeddedServer(srv.data_dir, port=srv.port)
            await asyncio.to_thread(self.store_server.start)  # replays the AOF
            rec["t_end"] = self.now()
        elif f.kind == "store_sigstop":
            assert srv is not None and srv.proc is not None
            _killpg(srv.proc.pid, signal.SIGSTOP)
            await asyncio.sleep(f.duration_s)
            _killpg(srv.proc.pid, signal.SIGCONT)
            rec["t_end"] = self.now()
        elif f.kind == "orchestratord_kill9":
            assert self.orch is not None
            _killpg(self.orch.pid, signal.SIGKILL)
            await asyncio.to_thread(self.orch.wait)
            rec["t_killed"] = self.now()
            await asyncio.sleep(f.duration_s)
            self.orch_restarts += 1
            rec["ready_after_start_s"] = round(await self.start_orch(http), 3)
            rec["t_end"] = self.now()
        self.faults_done.append(rec)

    async def engine_urls(self, http: aiohttp.ClientSession) -> list[tuple[str, str]]:
        """(name, base URL) of every engine now: ours, or the pool-managerd's."""
        if self.pm is None:
            return [(str(e.index), e.url) for e in self.engines]
        reps = await self.pm.replicas(http) or []
        return [(x["replica_id"], x["base_url"]) for x in reps if x.get("base_url")]

    async def pool_health(self, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            async with http.get(
                self.orch_url + f"/v1/pools/{POOL}/health", timeout=aiohttp.ClientTimeout(5)
            ) as r:
                body: dict[str, Any] = await r.json()
                return body
        return None

    async def _until_ready(self, http: aiohttp.ClientSession, timeout: float) -> float | None:
        """Seconds until orchestratord reports every replica of the pool Ready."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            body = await self.pool_health(http) or {}
            ready = [x for x in body.get("replicas", []) if x.get("status") == "ready"]
            if len(ready) == self.prof.engines:
                return round(time.monotonic() - t0, 3)
            await asyncio.sleep(0.1)  # a state of two daemons: poll, bounded
        return None

    async def inject_pool(self, http: aiohttp.ClientSession, f: chaos_plan.Fault) -> None:
        """ORCH-6114: pool-managerd killed with SIGKILL (its engines die with it) and
        restarted with the same config; a restart storm: every engine killed as it comes
        up until every replica's breaker is open, which must leave the pool unready at
        orchestratord; held open ``duration_s``, then reset through orchestratord's
        ``POST /v1/pools/{id}/reset`` (ORCH-3026), and the time until it serves again."""
        pm = self.pm
        assert pm is not None and pm.proc is not None
        for _ in range(int(chaos_plan.STORE_FAULT_WAIT_S / 0.05)):
            if any(v[1] > 0 for v in self.live.values()):
                break
            await asyncio.sleep(0.05)
        rec: dict[str, Any] = {
            "n": f.n,
            "kind": f.kind,
            "target": None,
            "replica_id": None,
            "planned_at_s": f.at_s,
            "in_flight": sorted(self.live),
        }
        rec["t_start"] = self.now()
        rec["at_s"] = round(time.monotonic() - self.t0, 3)
        log(f"fault {f.n}: {f.kind} at {rec['at_s']}s ({len(self.live)} tasks streaming)")
        if f.kind == "pool_managerd_kill9":
            engines = {p for p in pm.engine_pids if _pid_alive(p)}
            os.kill(pm.proc.pid, signal.SIGKILL)  # the daemon only: engines die with it
            await asyncio.to_thread(pm.proc.wait)
            await asyncio.sleep(f.duration_s)
            rec["engines_left_running"] = sorted(p for p in engines if _pid_alive(p))
            pm.start()
            rec["ready_after_start_s"] = await self._until_ready(http, 90)
            rec["t_end"] = self.now()
        elif f.kind == "restart_storm":
            kills, t0 = 0, time.monotonic()
            opened: list[str] = []
            while time.monotonic() - t0 < 60:
                reps = await pm.replicas(http) or []
                if reps and all(x.get("circuit_open") for x in reps):
                    opened = [x["replica_id"] for x in reps]
                    break
                for x in reps:
                    if x.get("pid") and not x.get("circuit_open") and _pid_alive(x["pid"]):
                        _killpg(int(x["pid"]), signal.SIGKILL)  # the engine "crashes"
                        kills += 1
                await asyncio.sleep(0.1)
            rec["t_open"] = self.now()
            rec["kills"], rec["breakers_open"] = kills, opened
            rec["open_after_s"] = round(time.monotonic() - t0, 3)
            # the pool must be reported unready (not ready, no Ready replica)
            unready = None
            for _ in range(50):
                body = await self.pool_health(http)
                if body is not None and not body.get("ready"):
                    unready = self.now()
                    break
                await asyncio.sleep(0.1)
            rec["unready_seen"] = unready is not None
            rec["unready_after_open_s"] = (
                None if unready is None else round(unready - rec["t_open"], 3)
            )
            await asyncio.sleep(f.duration_s)
            rec["t_end"] = self.now()  # the reset: the end of the outage
            async with http.post(
                self.orch_url + f"/v1/pools/{POOL}/reset",
                headers={"Authorization": f"Bearer {self.admin_key}"},
                timeout=aiohttp.ClientTimeout(30),
            ) as r:
                rec["reset_status"] = r.status
                rec["reset_answer"] = await r.json(content_type=None)
            rec["ready_after_reset_s"] = await self._until_ready(http, 90)
        self.faults_done.append(rec)

    # ----------------------------------------------------------------- clients

    async def client(self, http: aiohttp.ClientSession, a: chaos_plan.Arrival) -> None:
        rec: dict[str, Any] = {
            "n": a.n,
            "tenant": a.tenant,
            "priority": a.priority,
            "behaviour": a.behaviour,
            "burst": a.burst,
            "session": a.session,
            "api": a.api,
            "max_tokens": a.max_tokens,
            "submits": [],
            "task_id": None,
            "t_accepted": None,
            "events": [],
            "connections": [],
            "cancel": None,
        }
        self.records[a.n] = rec
        await asyncio.sleep(max(0.0, self.t0 + a.at_s - time.monotonic()))
        if a.api not in chaos_plan.APIS:
            raise ValueError(f"arrival {a.n}: unknown api {a.api!r}")
        lock = None
        if a.session is not None:
            lock = self.sessions.setdefault((a.tenant, a.session), asyncio.Lock())
            await lock.acquire()
        try:
            if a.api == "openai":
                await self._openai_client(http, a, rec)
            else:
                await self._task_client(http, a, rec)
        finally:
            if lock is not None:
                lock.release()

    async def _task_client(
        self, http: aiohttp.ClientSession, a: chaos_plan.Arrival, rec: dict[str, Any]
    ) -> None:
        headers = {"Authorization": f"Bearer {self.keys[a.tenant]}"}
        body: dict[str, Any] = {
            "prompt": a.prompt,
            "max_tokens": a.max_tokens,
            "priority": a.priority,
            "temperature": 0.7,
            "seed": a.n,
        }
        if a.deadline_ms:
            body["deadline_ms"] = a.deadline_ms
        if a.session is not None:
            body["session_id"] = str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"chaos/{self.seed}/{a.tenant}/{a.session}")
            )
        first_ra: float | None = None
        t_first = 0.0
        t_send0 = self.now()
        while True:
            t_send = self.now()
            try:
                async with http.post(
                    self.orch_url + "/v1/tasks",
                    json=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(30),
                ) as r:
                    status = r.status
                    data = await r.json(content_type=None)
                    ra = r.headers.get("Retry-After")
                    backoff = r.headers.get("X-Backoff-Ms")
            except (TimeoutError, aiohttp.ClientError) as exc:
                rec["submits"].append(
                    {
                        "t_send": t_send,
                        "t_recv": self.now(),
                        "status": 0,
                        "code": repr(exc)[:80],
                        "retry_after": None,
                    }
                )
                # orchestratord down (killed, restarting): nothing was sent, so a client
                # may submit again; any other failure might have been admitted: stop
                refused = isinstance(exc, aiohttp.ClientConnectorError)
                if refused and self.now() - t_send0 < 20 and not self.stopping.is_set():
                    await asyncio.sleep(0.5)
                    continue
                return
            t_recv = self.now()
            sub = {
                "t_send": t_send,
                "t_recv": t_recv,
                "status": status,
                "code": data.get("code") if isinstance(data, dict) else None,
                "message": str(data.get("message"))[:200] if isinstance(data, dict) else None,
                "policy": data.get("policy_label") if isinstance(data, dict) else None,
                "retry_after": float(ra) if ra is not None else None,
                "backoff_ms": int(backoff) if backoff is not None else None,
            }
            rec["submits"].append(sub)
            if status == 202:
                rec["task_id"], rec["t_accepted"] = data["task_id"], t_recv
                break
            if ra is None or status not in (429, 503):
                return
            if first_ra is None:
                first_ra, t_first = float(ra), t_recv
            if t_recv - t_first > 3 * first_ra + 10 or self.stopping.is_set():
                return
            await asyncio.sleep(0.5)  # probe often: measures the real wait to admission
        tid = rec["task_id"]
        canceller = None
        if a.behaviour == "cancel":
            canceller = asyncio.create_task(self._cancel(http, tid, a.cancel_after_s, rec, headers))
        last: int | None = None
        limit = a.disconnect_after if a.behaviour == "disconnect" else None
        attempt = 0
        while True:
            done, last = await self._stream(http, tid, headers, rec, last, limit)
            attempt += 1
            if done:
                break
            # Reconnect with Last-Event-ID until the terminal: at least 6 times, and for
            # as long as an event came in the last 45 s (orchestratord or its store may
            # be restarting: ORCH-6110)
            if attempt >= 6 and self.now() - self._last_event_t(rec) > 45:
                break
            if limit is not None:
                limit = None
                await asyncio.sleep(a.reconnect_after_s)
            else:
                await asyncio.sleep(0.5)
        if canceller is not None:
            await canceller

    async def _openai_client(
        self, http: aiohttp.ClientSession, a: chaos_plan.Arrival, rec: dict[str, Any]
    ) -> None:
        """A streaming ``POST /v1/completions`` through the OpenAI-compatible frontend.

        The API has no cancel call and no resume: a client that cancels closes its
        stream (after ``cancel_after_s`` from the answer's headers, or after
        ``disconnect_after`` chunks), which the frontend turns into a cancel of the task
        (ORCH-9113). Every chunk is kept with its receive time; ``[DONE]``, an error
        chunk and the close are recorded in ``rec["oa"]`` for the checker.
        """
        headers = {
            "Authorization": f"Bearer {self.keys[a.tenant]}",
            "x-llorch-priority": a.priority,
        }
        if a.deadline_ms:
            headers["x-llorch-deadline-ms"] = str(a.deadline_ms)
        if a.session is not None:
            headers["x-llorch-session-id"] = str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"chaos/{self.seed}/{a.tenant}/{a.session}")
            )
        body = {
            "model": POOL,
            "prompt": a.prompt,
            "max_tokens": a.max_tokens,
            "temperature": 0.7,
            "seed": a.n,
            "stream": True,
        }
        oa: dict[str, Any] = {"chunks": [], "done": None, "error": None, "closed": None}
        rec["oa"] = oa
        first_ra: float | None = None
        t_first = 0.0
        timeout = aiohttp.ClientTimeout(total=STREAM_TIMEOUT_S, sock_read=STREAM_TIMEOUT_S)
        while True:
            t_send = self.now()
            try:
                async with http.post(
                    self.orch_url + "/v1/completions", json=body, headers=headers, timeout=timeout
                ) as r:
                    status = r.status
                    if status != 200:
                        data = await r.json(content_type=None)
                        err = data.get("error") if isinstance(data, dict) else None
                        ra = r.headers.get("retry-after")
                        ms = r.headers.get("retry-after-ms")
                        rec["submits"].append(
                            {
                                "t_send": t_send,
                                "t_recv": self.now(),
                                "status": status,
                                "code": (err or {}).get("code"),
                                "message": str((err or {}).get("message"))[:200],
                                "policy": r.headers.get("x-llorch-policy-label"),
                                "retry_after": float(ra) if ra is not None else None,
                                "backoff_ms": int(ms) if ms is not None else None,
                            }
                        )
                    else:
                        t_recv = self.now()
                        rec["submits"].append(
                            {"t_send": t_send, "t_recv": t_recv, "status": 200, "code": None,
                             "retry_after": None}
                        )  # fmt: skip
                        rec["task_id"] = r.headers["x-llorch-task-id"]
                        rec["t_accepted"] = t_recv
                        await self._openai_read(r, a, oa)
                        return
            except (TimeoutError, aiohttp.ClientError) as exc:
                if rec["task_id"] is not None:
                    oa["broken"] = repr(exc)[:120]
                    return
                rec["submits"].append(
                    {"t_send": t_send, "t_recv": self.now(), "status": 0,
                     "code": repr(exc)[:80], "retry_after": None}
                )  # fmt: skip
                return
            if ra is None or status not in (429, 503):
                return
            if first_ra is None:
                first_ra, t_first = float(ra), self.now()
            if self.now() - t_first > 3 * first_ra + 10 or self.stopping.is_set():
                return
            await asyncio.sleep(0.5)  # probe often: measures the real wait to admission

    async def _openai_read(
        self, r: aiohttp.ClientResponse, a: chaos_plan.Arrival, oa: dict[str, Any]
    ) -> None:
        parser = SSEParser()
        limit = a.disconnect_after if a.behaviour == "disconnect" else None
        close_at = (
            asyncio.get_running_loop().time() + a.cancel_after_s
            if a.behaviour == "cancel"
            else None
        )
        try:
            async with asyncio.timeout_at(close_at):
                async for raw in r.content.iter_any():
                    for msg in parser.feed(raw):
                        t = self.now()
                        if msg.data == "[DONE]":
                            oa["done"] = t
                            continue
                        d = msgspec.json.decode(msg.data)
                        if "error" in d:
                            oa["error"] = [t, d["error"]]
                            continue
                        for c in d.get("choices", []):
                            oa["chunks"].append([t, c.get("text", ""), c.get("finish_reason")])
                        n_text = sum(1 for c in oa["chunks"] if c[2] is None)
                        if limit is not None and n_text >= limit and oa["done"] is None:
                            r.close()  # the disconnect: the frontend cancels the task
                            oa["closed"] = self.now()
                            return
        except TimeoutError:
            if oa["done"] is None and oa["error"] is None:
                r.close()
                oa["closed"] = self.now()

    async def _cancel(
        self,
        http: aiohttp.ClientSession,
        tid: str,
        after: float,
        rec: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        await asyncio.sleep(after)
        t0 = self.now()
        while True:
            t_send = self.now()
            status = 0
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with http.post(
                    self.orch_url + f"/v1/tasks/{tid}/cancel",
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(30),
                ) as r:
                    status = r.status
                    await r.read()
            rec["cancel"] = {"t_send": t_send, "t_recv": self.now(), "status": status}
            # orchestratord or its store down (503, or no answer): cancel again, 10 s at most
            if status not in (0, 503) or self.now() - t0 > 10 or self.stopping.is_set():
                return
            await asyncio.sleep(0.5)

    def _last_event_t(self, rec: dict[str, Any]) -> float:
        ev = rec["events"]
        return float(ev[-1][0]) if ev else float(rec["t_accepted"])

    async def _stream(
        self,
        http: aiohttp.ClientSession,
        tid: str,
        headers: dict[str, str],
        rec: dict[str, Any],
        last: int | None,
        limit: int | None,
    ) -> tuple[bool, int | None]:
        h = dict(headers)
        if last is not None:
            h["Last-Event-ID"] = str(last)
        conn: dict[str, Any] = {"t_open": self.now(), "last_event_id": last, "n": 0, "error": None}
        rec["connections"].append(conn)
        parser = SSEParser()
        try:
            async with http.get(
                self.orch_url + f"/v1/tasks/{tid}/stream",
                headers=h,
                timeout=aiohttp.ClientTimeout(total=STREAM_TIMEOUT_S, sock_read=STREAM_TIMEOUT_S),
            ) as r:
                if r.status != 200:
                    conn["error"] = f"HTTP {r.status}"
                    return False, last
                async for chunk in r.content.iter_any():
                    for msg in parser.feed(chunk):
                        t = self.now()
                        eid = int(msg.id) if msg.id is not None else -1
                        data = msgspec.json.decode(msg.data)
                        rec["events"].append([t, eid, msg.event, data])
                        if msg.event == "started":
                            self.live[rec["n"]] = [data.get("replica_id"), 0]
                        elif msg.event == "token" and rec["n"] in self.live:
                            self.live[rec["n"]][1] += 1
                        elif msg.event in chaos_check.TERMINAL:
                            self.live.pop(rec["n"], None)
                        conn["n"] += 1
                        last = eid
                        if msg.event in chaos_check.TERMINAL:
                            conn["t_close"] = self.now()
                            return True, last
                        if limit is not None and conn["n"] >= limit:
                            conn["t_close"] = self.now()
                            conn["error"] = "planned disconnect"
                            return False, last
        except (TimeoutError, aiohttp.ClientError) as exc:
            conn["error"] = repr(exc)[:120]
        conn["t_close"] = self.now()
        return False, last

    async def replay(self, http: aiohttp.ClientSession, rec: dict[str, Any]) -> None:
        tid = rec["task_id"]
        out: list[list[Any]] = []
        parser = SSEParser()
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(
                self.orch_url + f"/v1/tasks/{tid}/stream",
                headers={"Authorization": f"Bearer {self.keys[rec['tenant']]}"},
                timeout=aiohttp.ClientTimeout(total=20),
            ) as r:
                rec["replay_status"] = r.status
                if r.status != 200:
                    rec["replay"] = []
                    return
                async for chunk in r.content.iter_any():
                    for msg in parser.feed(chunk):
                        out.append([int(msg.id or -1), msg.event, msgspec.json.decode(msg.data)])
        rec["replay"] = out

    # ----------------------------------------------------------------- run

    async def run(self) -> dict[str, Any]:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as http:
            try:
                log(f"starting {self.prof.engines} engines and orchestratord")
                await self.start(http)
                log(
                    f"ready; plan {self.plan.digest[:16]}: {len(self.plan.arrivals)} arrivals, "
                    f"{len(self.plan.faults)} faults over {self.prof.duration_s:.0f}s"
                )
                monitors = [asyncio.create_task(self.monitor_slots(http, e)) for e in self.engines]
                if self.pm is not None:
                    monitors.append(asyncio.create_task(self.pm.monitor(http, self.stopping)))
                self.t0 = time.monotonic()
                t_load0 = self.now()
                clients = [asyncio.create_task(self.client(http, a)) for a in self.plan.arrivals]
                faults = [asyncio.create_task(self.inject(http, f)) for f in self.plan.faults]
                await asyncio.gather(*faults)
                await asyncio.sleep(max(0.0, self.t0 + self.prof.duration_s - time.monotonic()))
                t_load1 = self.now()
                log("load phase over; draining")
                pending = set(clients)
                t_drain = time.monotonic()
                while pending and time.monotonic() - t_drain < DRAIN_TIMEOUT_S + STREAM_TIMEOUT_S:
                    _, pending = await asyncio.wait(pending, timeout=10)
                    if pending:
                        log(f"draining: {len(pending)} clients still running")
                done = set(clients) - pending
                for c in pending:
                    c.cancel()
                for c in done:
                    if c.exception() is not None:
                        raise c.exception()  # type: ignore[misc]
                # No engine slot may stay busy once every client is done (≤ 15 s to settle).
                slots_after: dict[str, Any] = {}
                for _ in range(150):
                    slots_after = {}
                    for name, url in await self.engine_urls(http):
                        try:
                            async with http.get(url + "/slots") as r:
                                slots_after[name] = await r.json()
                        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                            slots_after[name] = [{"id": -1, "error": repr(exc)[:200]}]
                    if not any(
                        s.get("is_processing") or "error" in s
                        for v in slots_after.values()
                        for s in v
                    ):
                        break
                    await asyncio.sleep(0.1)
                self.stopping.set()
                await asyncio.gather(*monitors)
                sem = asyncio.Semaphore(8)

                async def one(r: dict[str, Any]) -> None:
                    async with sem:
                        await self.replay(http, r)

                await asyncio.gather(*(one(r) for r in self.records.values() if r["task_id"]))
                counters = {str(e.index): await e.token_counters(http) for e in self.engines}
                async with http.get(self.orch_url + "/metrics") as r:
                    orch_metrics = await r.text()
            finally:
                self.stopping.set()
                await self.stop()
        ends = []
        for line in self.orch_log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("msg") == "task ended":
                    ends.append(doc)
        history = {
            "profile": self.prof.name,
            "seed": self.seed,
            "plan_digest": self.plan.digest,
            "plan": self.plan.to_json(),
            "started": started,
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
            "load_window": [t_load0, t_load1],
            "weights": {t.name: t.weight for t in self.prof.tenants},
            "max_turns": 8,
            # the config keeps the defaults of max_turns and of the log retention
            "event_log_retention_s": 600.0,
            "quotas": {t.name: t.max_concurrent for t in self.prof.tenants if t.max_concurrent},
            "tasks": [self.records[k] for k in sorted(self.records)],
            # no proxies in front of pool-managerd's engines: no exchanges recorded, and
            # the checks that need them are not run (ORCH-6114)
            "exchanges": None
            if self.pm is not None
            else [vars(x) for p in self.proxies for x in p.exchanges],
            "pool_managerd_samples": None if self.pm is None else self.pm.samples,
            "slot_samples": self.slot_samples,
            "slots_after_run": {
                k: [
                    {
                        "id": s["id"],
                        "is_processing": s.get("is_processing"),
                        "error": s.get("error"),
                    }
                    for s in v
                ]
                for k, v in slots_after.items()
            },
            "daemon_task_ends": ends,
            # With the store, the daemon's own account (one task-end line per task, its
            # counters) is not the task's: a kill -9 loses the log line and the counters,
            # and a run this instance stopped (store unreachable for a lease) is continued
            # from the store's log. The store's log is checked instead (ORCH-6111).
            "daemon_account": not self.prof.store,
            "store": self.prof.store,
            "orchestratord_restarts": self.orch_restarts,
            "faults": self.faults_done,
            "engine_token_counters_end": counters,
            "orch_metrics_tasks": [
                ln
                for ln in orch_metrics.splitlines()
                if ln.startswith(("llorch_tasks", "orchd_tasks", "tasks_"))
                and not ln.startswith("#")
            ][:400],
        }
        return history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(chaos_plan.PROFILES), default="ci")
    ap.add_argument("--long", action="store_true", help="the nightly profile (30 minutes)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "reports")
    ap.add_argument("--plan-only", action="store_true", help="print the plan digest and exit")
    ap.add_argument(
        "--recheck",
        type=Path,
        metavar="HISTORY",
        help="check a recorded <base>.history.json.gz again and rewrite its report",
    )
    args = ap.parse_args(argv)
    if args.recheck:
        return recheck(args.recheck)
    prof = chaos_plan.PROFILES["long" if args.long else args.profile]
    if args.plan_only:
        plan = chaos_plan.make_plan(prof, args.seed)
        print(
            json.dumps(
                {
                    "digest": plan.digest,
                    "arrivals": len(plan.arrivals),
                    "faults": [vars(f) for f in plan.faults],
                }
            )
        )
        return 0
    rc, _ = run_profile(prof, args.seed, args.out)
    return rc


def recheck(path: Path) -> int:
    """The checks and figures are pure functions of the history: run them again
    (after a checker change) and rewrite the report; the report says so."""
    with gzip.open(path, "rt") as f:
        history = json.load(f)
    history["rechecked"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    violations = chaos_check.check(history)
    figs = chaos_check.figures(history, violations)
    base = path.parent / path.name.removesuffix(".history.json.gz")
    chaos_report.write(base, history, violations, figs)
    log(f"report: {base}.md")
    return 0 if not violations and figs["lost"] == 0 else 1


def run_profile(prof: chaos_plan.Profile, seed: int, out: Path) -> tuple[int, Path]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = out / "work" / f"{prof.name}-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(prof, seed, out, work)
    history = asyncio.run(runner.run())
    violations = chaos_check.check(history)
    figs = chaos_check.figures(history, violations)
    base = out / f"{prof.name}-seed{seed}-{stamp}"
    chaos_report.write(base, history, violations, figs)
    log(f"report: {base}.md")
    return (0 if not violations and figs["lost"] == 0 else 1), base


if __name__ == "__main__":
    sys.exit(main())
