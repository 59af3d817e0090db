"""The processes of a chaos run as one topology: engines behind fault proxies (or a
remote pool-managerd), orchestratord configured for them, and the optional valkey-server
of the store profile. Started together, stopped together by PID group. ORCH-6100."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import chaos_plan
from chaos_procs import POOL, SMOLLM2, Engine, PoolManagerd, killpg, log
from chaos_proxy import ProxyThread
from llama_orch.pool_managerd.engine import die_with_parent, free_port
from llama_orch.pool_managerd.provision import provision_llama_server, provision_model


class Topology:
    def __init__(self, prof: chaos_plan.Profile, workdir: Path) -> None:
        self.prof, self.workdir = prof, workdir
        self.engines: list[Engine] = []
        self.proxies: list[ProxyThread] = []
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
                p = ProxyThread(e.index, e.port)
                await p.start()
                self.proxies.append(p)
        from llama_orch.orchestratord.auth import hash_key  # the workspace venv

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
            killpg(self.orch.pid, signal.SIGTERM)
            try:
                self.orch.wait(15)
            except subprocess.TimeoutExpired:
                killpg(self.orch.pid, signal.SIGKILL)
                self.orch.wait()
        for p in self.proxies:
            await p.close()
        for e in self.engines:
            e.stop()
        if self.pm is not None:
            self.pm.stop()
        if self.store_server is not None:
            if self.store_server.proc is not None:  # a paused store cannot take SIGTERM
                killpg(self.store_server.proc.pid, signal.SIGCONT)
            self.store_server.stop()  # by PID (its process group), even after a restart
            shutil.rmtree(self.store_dir, ignore_errors=True)

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

    async def until_ready(self, http: aiohttp.ClientSession, timeout: float) -> float | None:
        """Seconds until orchestratord reports every replica of the pool Ready."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            body = await self.pool_health(http) or {}
            ready = [x for x in body.get("replicas", []) if x.get("status") == "ready"]
            if len(ready) == self.prof.engines:
                return round(time.monotonic() - t0, 3)
            await asyncio.sleep(0.1)  # a state of two daemons: poll, bounded
        return None
