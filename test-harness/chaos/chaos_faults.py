"""Fault injection of a chaos run on its schedule: engine kill/stop, network faults
through the proxies, overload bursts (ORCH-6100..6104), the store and orchestratord
(ORCH-6110) and pool-managerd (ORCH-6114). Every fault is recorded with its times."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import chaos_plan
from chaos_procs import POOL, killpg, log, now, pid_alive, replica_id
from chaos_state import RunState
from chaos_topology import Topology


class FaultInjector:
    def __init__(self, topo: Topology, state: RunState) -> None:
        self.topo, self.state = topo, state

    async def _until_streaming(self, replica: str | None, wait_s: float) -> None:
        """Wait (at most ``wait_s``) for a task streaming tokens (from ``replica`` if
        given), so the fault hits running work; the report says when it was injected."""
        for _ in range(int(wait_s / 0.05)):
            live = self.state.live.values()
            if any((replica is None or v[0] == replica) and v[1] > 0 for v in live):
                return
            await asyncio.sleep(0.05)

    def _record(self, f: chaos_plan.Fault, target: int | None) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "n": f.n,
            "kind": f.kind,
            "target": target,
            "replica_id": None if target is None else replica_id(target),
            "planned_at_s": f.at_s,
        }
        if target is None:
            rec["in_flight"] = sorted(self.state.live)
        rec["t_start"] = now()
        rec["at_s"] = round(time.monotonic() - self.state.t0, 3)
        return rec

    async def inject(self, http: aiohttp.ClientSession, f: chaos_plan.Fault) -> None:
        await asyncio.sleep(max(0.0, self.state.t0 + f.at_s - time.monotonic()))
        if f.kind in chaos_plan.STORE_FAULT_KINDS:
            await self.inject_store(http, f)
            return
        if f.kind in chaos_plan.POOL_FAULT_KINDS:
            await self.inject_pool(http, f)
            return
        e, p = self.topo.engines[f.target], self.topo.proxies[f.target]
        if f.kind in ("engine_kill9", "engine_sigstop", "net_blackhole", "net_reset"):
            await self._until_streaming(replica_id(f.target), 10.0)
        rec = self._record(f, f.target)
        log(f"fault {f.n}: {f.kind} on engine {f.target} at {rec['at_s']}s")
        if f.kind == "engine_kill9":
            e.signal(signal.SIGKILL)
            assert e.proc is not None
            e.proc.wait()
            await asyncio.sleep(f.duration_s)
            await e.start(http)
            p.upstream_port = e.port
            rec["t_end"] = now()
        elif f.kind == "engine_sigstop":
            e.signal(signal.SIGSTOP)
            await asyncio.sleep(f.duration_s)
            e.signal(signal.SIGCONT)
            rec["t_end"] = now()
        elif f.kind == "net_blackhole":
            p.blackhole(True)
            await asyncio.sleep(f.duration_s)
            p.blackhole(False)
            rec["t_end"] = now()
        elif f.kind == "net_latency":
            p.latency(f.latency_ms)
            await asyncio.sleep(f.duration_s)
            p.latency(0)
            rec["t_end"] = now()
        elif f.kind == "net_reset":
            p.reset()
            rec["t_end"] = now()
        elif f.kind == "overload":
            rec["t_end"] = rec["t_start"] + f.duration_s
            rec["burst"] = f.burst
        self.state.faults_done.append(rec)

    async def inject_store(self, http: aiohttp.ClientSession, f: chaos_plan.Fault) -> None:
        """ORCH-6110: the store killed (restarted on its AOF, same port), the store
        paused, orchestratord killed and restarted with the same config. Waits (at most
        ``STORE_FAULT_WAIT_S``) for a task streaming tokens, so the fault hits running work."""
        await self._until_streaming(None, chaos_plan.STORE_FAULT_WAIT_S)
        rec = self._record(f, None)
        log(f"fault {f.n}: {f.kind} at {rec['at_s']}s ({len(self.state.live)} tasks streaming)")
        srv = self.topo.store_server
        if f.kind == "store_kill9":
            assert srv is not None and srv.proc is not None
            killpg(srv.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(srv.proc.wait)
            if srv.proc.stderr is not None:  # the dead server's pipe
                srv.proc.stderr.close()
            await asyncio.sleep(f.duration_s)
            from llama_orch.state_valkey import EmbeddedServer

            self.topo.store_server = EmbeddedServer(srv.data_dir, port=srv.port)
            await asyncio.to_thread(self.topo.store_server.start)  # replays the AOF
            rec["t_end"] = now()
        elif f.kind == "store_sigstop":
            assert srv is not None and srv.proc is not None
            killpg(srv.proc.pid, signal.SIGSTOP)
            await asyncio.sleep(f.duration_s)
            killpg(srv.proc.pid, signal.SIGCONT)
            rec["t_end"] = now()
        elif f.kind == "orchestratord_kill9":
            assert self.topo.orch is not None
            killpg(self.topo.orch.pid, signal.SIGKILL)
            await asyncio.to_thread(self.topo.orch.wait)
            rec["t_killed"] = now()
            await asyncio.sleep(f.duration_s)
            self.topo.orch_restarts += 1
            rec["ready_after_start_s"] = round(await self.topo.start_orch(http), 3)
            rec["t_end"] = now()
        self.state.faults_done.append(rec)

    async def inject_pool(self, http: aiohttp.ClientSession, f: chaos_plan.Fault) -> None:
        """ORCH-6114: pool-managerd killed with SIGKILL (its engines die with it) and
        restarted with the same config; a restart storm: every engine killed as it comes
        up until every replica's breaker is open, which must leave the pool unready at
        orchestratord; held open ``duration_s``, then reset through orchestratord's
        ``POST /v1/pools/{id}/reset`` (ORCH-3026), and the time until it serves again."""
        pm = self.topo.pm
        assert pm is not None and pm.proc is not None
        await self._until_streaming(None, chaos_plan.STORE_FAULT_WAIT_S)
        rec = self._record(f, None)
        log(f"fault {f.n}: {f.kind} at {rec['at_s']}s ({len(self.state.live)} tasks streaming)")
        if f.kind == "pool_managerd_kill9":
            engines = {p for p in pm.engine_pids if pid_alive(p)}
            os.kill(pm.proc.pid, signal.SIGKILL)  # the daemon only: engines die with it
            await asyncio.to_thread(pm.proc.wait)
            await asyncio.sleep(f.duration_s)
            rec["engines_left_running"] = sorted(p for p in engines if pid_alive(p))
            pm.start()
            rec["ready_after_start_s"] = await self.topo.until_ready(http, 90)
            rec["t_end"] = now()
        elif f.kind == "restart_storm":
            kills, t0 = 0, time.monotonic()
            opened: list[str] = []
            while time.monotonic() - t0 < 60:
                reps = await pm.replicas(http) or []
                if reps and all(x.get("circuit_open") for x in reps):
                    opened = [x["replica_id"] for x in reps]
                    break
                for x in reps:
                    if x.get("pid") and not x.get("circuit_open") and pid_alive(x["pid"]):
                        killpg(int(x["pid"]), signal.SIGKILL)  # the engine "crashes"
                        kills += 1
                await asyncio.sleep(0.1)
            rec["t_open"] = now()
            rec["kills"], rec["breakers_open"] = kills, opened
            rec["open_after_s"] = round(time.monotonic() - t0, 3)
            # the pool must be reported unready (not ready, no Ready replica)
            unready = None
            for _ in range(50):
                body = await self.topo.pool_health(http)
                if body is not None and not body.get("ready"):
                    unready = now()
                    break
                await asyncio.sleep(0.1)
            rec["unready_seen"] = unready is not None
            rec["unready_after_open_s"] = (
                None if unready is None else round(unready - rec["t_open"], 3)
            )
            await asyncio.sleep(f.duration_s)
            rec["t_end"] = now()  # the reset: the end of the outage
            async with http.post(
                self.topo.orch_url + f"/v1/pools/{POOL}/reset",
                headers={"Authorization": f"Bearer {self.topo.admin_key}"},
                timeout=aiohttp.ClientTimeout(30),
            ) as r:
                rec["reset_status"] = r.status
                rec["reset_answer"] = await r.json(content_type=None)
            rec["ready_after_reset_s"] = await self.topo.until_ready(http, 90)
        self.state.faults_done.append(rec)

    # ----------------------------------------------------------------- clients
