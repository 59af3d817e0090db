"""Chaos and load harness (issue #21): the seeded plan, the fault proxy, and the CI,
store and pool-managerd profiles on real llama-server engines (the checker's
self-tests are in ``test_chaos_check.py``).

ORCH-6100..6107 (`.specs/60-testing-and-ci.md` §7).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # --import-mode=importlib: load the harness by its folder
    sys.path.insert(0, str(HERE))

import chaos_cancel  # noqa: E402
import chaos_plan  # noqa: E402
from chaos_proxy import FaultProxy  # noqa: E402

# --------------------------------------------------------------------------- plan


def test_the_same_seed_gives_the_same_load_and_fault_schedule() -> None:
    """ORCH-6102."""
    for prof in chaos_plan.PROFILES.values():
        a, b = chaos_plan.make_plan(prof, 11), chaos_plan.make_plan(prof, 11)
        assert a.to_json() == b.to_json() and a.digest == b.digest
        assert chaos_plan.make_plan(prof, 12).digest != a.digest
    ci = chaos_plan.make_plan(chaos_plan.CI, 7)
    kinds = {f.kind for f in ci.faults}
    assert {"engine_kill9", "engine_sigstop", "net_blackhole", "overload"} <= kinds
    assert {a.behaviour for a in ci.arrivals} == {"read", "cancel", "disconnect"}
    assert {a.priority for a in ci.arrivals} == {"interactive", "batch"}
    assert len({a.tenant for a in ci.arrivals}) == 3
    long = chaos_plan.make_plan(chaos_plan.LONG, 7)
    assert long.duration_s >= 1800 and len(long.faults) > 2 * len(ci.faults)


def test_pending_fault_kinds_are_refused_not_faked() -> None:
    def prof(kind: str, *, store: bool = False) -> chaos_plan.Profile:
        return chaos_plan.Profile(
            name="x",
            duration_s=10,
            rate_per_s=1,
            tenants=chaos_plan.TENANTS,
            faults=(chaos_plan.FaultSpec(kind, at_s=1.0),),
            store=store,
        )

    with pytest.raises(ValueError, match="second orchestratord"):
        chaos_plan.make_plan(prof("orchestratord_pause", store=True), 1)
    for kind in chaos_plan.STORE_FAULT_KINDS:  # ORCH-6110: only with the store started
        with pytest.raises(ValueError, match="state store"):
            chaos_plan.make_plan(prof(kind), 1)
        assert chaos_plan.make_plan(prof(kind, store=True), 1).faults[0].kind == kind
    for kind in chaos_plan.POOL_FAULT_KINDS:  # ORCH-6114: only with a pool-managerd
        with pytest.raises(ValueError, match="remote pool-managerd"):
            chaos_plan.make_plan(prof(kind), 1)
    with pytest.raises(ValueError, match="no proxies"):  # its engines are not proxied
        chaos_plan.make_plan(dataclasses.replace(prof("net_blackhole"), pool_managerd=True), 1)
    plan = chaos_plan.make_plan(chaos_plan.POOL_PM, 7)
    assert {f.kind for f in plan.faults} == set(chaos_plan.POOL_FAULT_KINDS)
    for f in plan.faults:  # submits land inside each fault (ORCH-6115)
        end = f.at_s + f.duration_s + chaos_plan.STORE_FAULT_WAIT_S
        assert sum(1 for a in plan.arrivals if f.at_s <= a.at_s <= end) >= 2, f


def test_the_store_profile_submits_during_every_store_fault() -> None:
    """ORCH-6110, ORCH-6111: the plan puts arrivals inside each store or orchestratord
    fault's window (so the outage rule is exercised), sends no OpenAI-API client (no
    resume there) and stays short (a CI test of at most 45 s)."""
    plan = chaos_plan.make_plan(chaos_plan.STORE, 7)
    assert plan.digest == chaos_plan.make_plan(chaos_plan.STORE, 7).digest
    assert {f.kind for f in plan.faults} == set(chaos_plan.STORE_FAULT_KINDS)
    for f in plan.faults:
        end = f.at_s + f.duration_s + chaos_plan.STORE_FAULT_WAIT_S
        assert sum(1 for a in plan.arrivals if f.at_s <= a.at_s <= end) >= 2, f
    assert {a.api for a in plan.arrivals} == {"tasks"}
    assert plan.duration_s <= 25 and len(plan.arrivals) <= 45


# --------------------------------------------------------------------------- proxy


async def test_fault_proxy_ties_each_request_of_a_kept_alive_connection_to_its_arrival() -> None:
    """Engine connections are pooled (ORCH-2720): a request must not take the marker of
    the previous one, still in the proxy's look-behind (a CI run counted two arrivals'
    clean ends as "no engine request" that way)."""

    async def engine(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await r.read(4096):
            w.write(b'HTTP/1.1 200 OK\r\n\r\ndata: {"id_slot":0,"stop":true}\n\n')
            await w.drain()
        w.close()

    srv = await asyncio.start_server(engine, "127.0.0.1", 0)
    proxy = FaultProxy(0, srv.sockets[0].getsockname()[1])
    port = await proxy.start()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        for n in (7, 8):
            w.write(b"POST /completion HTTP/1.1\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.05)  # the body in a read of its own
            w.write(b'{"prompt":"[chaos-00000%d] short"}' % n)
            await w.drain()
            got = b""
            while b'"stop":true' not in got:
                got += await asyncio.wait_for(r.read(4096), 5)
        assert [x.arrival for x in proxy.exchanges] == [7, 8]
        w.close()
    finally:
        await proxy.close()
        srv.close()
        await srv.wait_closed()


async def test_fault_proxy_sniffs_exchanges_and_black_holes() -> None:
    """The proxy ties a /completion to its arrival marker, sees id_slot and the final
    chunk, and a black hole drops every byte of connections open during it."""

    async def engine(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await r.read(4096):
            w.write(b'HTTP/1.1 200 OK\r\n\r\ndata: {"id_slot":2,"stop":false}\n\n')
            w.write(b'data: {"stop":true}\n\n')
            await w.drain()
        w.close()

    srv = await asyncio.start_server(engine, "127.0.0.1", 0)
    proxy = FaultProxy(0, srv.sockets[0].getsockname()[1])
    port = await proxy.start()
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b'POST /completion HTTP/1.1\r\n\r\n{"prompt":"[chaos-000042] hi"}')
        await w.drain()
        got = b""
        while b'"stop":true' not in got:
            got += await asyncio.wait_for(r.read(4096), 5)
        (x,) = proxy.exchanges
        assert (x.arrival, x.id_slot, x.final, x.path) == (42, 2, True, "/completion")
        assert x.t_final is not None and x.opened <= x.t_final  # ORCH-6250
        proxy.blackhole(True)
        w.write(b'POST /completion HTTP/1.1\r\n\r\n{"prompt":"[chaos-000043] hi"}')
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(4096), 0.5)
        assert len(proxy.exchanges) == 1  # nothing reached the engine
        w.close()
    finally:
        await proxy.close()
        srv.close()
        await srv.wait_closed()


async def test_a_proxy_on_its_own_thread_stamps_our_close_while_the_runners_loop_stalls() -> None:
    """ORCH-6255, ORCH-6256: the runner's loop stalled (here: 0.3 s of blocking calls) must not
    delay the proxy's stamp of the client's close of an engine request, which is where
    our part of a cancel ends; a proxy on the runner's loop stamps it after the stall."""
    import socket
    import threading

    from chaos_proxy import ProxyThread

    lsock = socket.create_server(("127.0.0.1", 0))

    def engine() -> None:  # blocking, on a thread: answers one chunk, waits for the end
        conn, _ = lsock.accept()
        with conn, contextlib.suppress(ConnectionResetError):  # the proxy's RST
            conn.recv(4096)
            conn.sendall(b'HTTP/1.1 200 OK\r\n\r\ndata: {"id_slot":0,"stop":false}\n\n')
            while conn.recv(4096):
                pass

    async def one_request(port: int) -> float:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b'POST /completion HTTP/1.1\r\n\r\n{"prompt":"[chaos-000042] hi"}')
        got = b""
        while b"id_slot" not in got:
            got += await asyncio.wait_for(r.read(4096), 5)
        w.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # the FIN leaves now
        t_close = time.time()
        time.sleep(0.3)  # the runner's loop stalls
        w.close()
        return t_close

    for cls, late in ((ProxyThread, False), (FaultProxy, True)):
        th = threading.Thread(target=engine, daemon=True)
        th.start()
        proxy = cls(0, lsock.getsockname()[1])
        port = await proxy.start()
        try:
            t_close = await asyncio.wait_for(one_request(port), 10)
            await asyncio.sleep(0.05)
        finally:
            await proxy.close()
        (x,) = proxy.exchanges
        assert x.arrival == 42 and x.cut == "client-eof"
        assert x.closed is not None and (x.closed - t_close > 0.25) is late, (cls, x)
        th.join(5)
    lsock.close()


# --------------------------------------------------------------------------- the CI profile


@pytest.mark.real_engine
@pytest.mark.alone  # its cancel bounds are timing-bound (ORCH-6240, ORCH-6250, ORCH-6258)
@pytest.mark.timeout(420)
def test_ci_chaos_profile_on_real_engines(llama_server_binary, smollm2_model) -> None:
    """ORCH-6100, ORCH-6101, ORCH-6104, ORCH-6106, ORCH-6250: two real llama-server replicas,
    engine kill -9, SIGSTOP, a network black hole and an overload burst under the
    seeded load; nothing lost, no invariant violated, and the acceptance figures."""
    import chaos_run

    seed = 7
    rc, base = chaos_run.run_profile(chaos_plan.CI, seed, HERE / "reports")
    summary = json.loads(base.with_suffix(".json").read_text())
    figs = summary["figures"]
    print(f"\n{base}.md\n{json.dumps(figs, indent=1)}")
    assert summary["plan_digest"] == chaos_plan.make_plan(chaos_plan.CI, seed).digest
    kinds = [f["kind"] for f in summary["schedule"]]
    assert sorted(kinds) == sorted(f.kind for f in chaos_plan.make_plan(chaos_plan.CI, seed).faults)
    assert figs["lost"] == 0, summary["violations"]
    assert figs["violations"] == 0, summary["violations"]
    assert figs["accepted"] > 50 and figs["completed"] > 20
    # Clients obey Retry-After and resubmit, so a 429 during the burst rarely becomes a
    # final outcome (rejected_by_code); the backpressure is the burst's own 429s.
    overload = [r for r in summary["figures"]["recovery"] if r["kind"] == "overload"]
    assert overload and all(r["rejected_429"] > 0 for r in overload), (
        "the overload burst must have met backpressure",
        overload,
    )
    # ORCH-6250..6253: our part (cancel -> engine connection closed) and the engine's
    # (-> slot released, in engine steps measured in this run), and a ceiling on all
    assert figs["cancel_slot_free_ms"]["n"] >= 3
    assert chaos_cancel.cancel_gate(figs) == [], figs["cancel_parts_ms"]
    assert figs["engine_kill_to_worker_reset_s_max"] is not None
    assert figs["engine_kill_to_worker_reset_s_max"] <= 2.0
    assert figs["retry_after_error_s"]["n"] >= 3
    assert figs["retry_after_error_s"]["p50"] <= 0.75  # on the ms forecast (ORCH-6268)
    assert rc == 0


@pytest.mark.alone  # its checker takes a request closed within 250 ms for an abort (ORCH-6258)
@pytest.mark.real_engine
@pytest.mark.timeout(180)
def test_pool_managerd_chaos_profile_on_real_engines(llama_server_binary, smollm2_model) -> None:
    """ORCH-6114, ORCH-6115: a remote pool-managerd launches and supervises two real
    llama-server replicas; pool-managerd killed with SIGKILL and restarted, then a
    restart storm: every breaker opens, the pool is reported unready, submits are
    answered 503 + Retry-After, the running tasks end typed, and a reset through
    orchestratord brings the pool back; nothing lost, every invariant held."""
    import chaos_run

    seed = 7
    rc, base = chaos_run.run_profile(chaos_plan.POOL_PM, seed, HERE / "reports" / "work")
    summary = json.loads(base.with_suffix(".json").read_text())
    figs = summary["figures"]
    print(f"\n{base}.md\n{json.dumps(figs['pool_faults'], indent=1)}")
    assert summary["plan_digest"] == chaos_plan.make_plan(chaos_plan.POOL_PM, seed).digest
    assert sorted(f["kind"] for f in summary["schedule"]) == sorted(chaos_plan.POOL_FAULT_KINDS)
    assert figs["lost"] == 0, summary["violations"]
    assert figs["violations"] == 0, summary["violations"]
    assert figs["accepted"] >= 20 and figs["completed"] >= 10
    pf = {f["kind"]: f for f in figs["pool_faults"]}
    storm = pf["restart_storm"]
    assert storm["kills"] >= 2 and storm["unready_seen"] and storm["reset_status"] == 200
    assert storm["answers"].get("503", 0) >= 1  # submits while unready: 503 + Retry-After
    assert pf["pool_managerd_kill9"]["ready_after_start_s"] is not None
    assert sum(f["in_flight"] for f in pf.values()) >= 1  # the faults hit running work
    assert rc == 0


@pytest.mark.alone  # its checker takes a request closed within 250 ms for an abort (ORCH-6258)
@pytest.mark.real_engine
@pytest.mark.timeout(180)
def test_store_chaos_profile_on_real_engines(llama_server_binary, smollm2_model) -> None:
    """ORCH-6110..6112: orchestratord on a harness-owned valkey-server (AOF) and two real
    llama-server replicas under a short seeded load; the store killed and restarted on
    its AOF, the store paused, orchestratord killed and restarted with the same config:
    no accepted task lost, every invariant held (token indices contiguous across the
    takeovers), submits during the outage answered 503 + Retry-After, and the figures."""
    import chaos_run

    seed = 7
    rc, base = chaos_run.run_profile(chaos_plan.STORE, seed, HERE / "reports" / "work")
    summary = json.loads(base.with_suffix(".json").read_text())
    figs = summary["figures"]
    print(f"\n{base}.md\n{json.dumps(figs['store_faults'], indent=1)}")
    assert summary["plan_digest"] == chaos_plan.make_plan(chaos_plan.STORE, seed).digest
    assert sorted(f["kind"] for f in summary["schedule"]) == sorted(chaos_plan.STORE_FAULT_KINDS)
    assert figs["lost"] == 0, summary["violations"]
    assert figs["violations"] == 0, summary["violations"]
    assert figs["accepted"] >= 20 and figs["completed"] >= 10
    sf = {f["kind"]: f for f in figs["store_faults"]}
    kill = sf["store_kill9"]
    # a killed store refuses connections: submits during it are answered 503 at once
    assert kill["answers"].get("503", 0) >= 1 and kill["first_202_after_s"] is not None
    assert set(kill["answers"]) <= {"503", "202"}
    assert sf["store_sigstop"]["submits"] >= 1
    assert sf["orchestratord_kill9"]["ready_after_start_s"] is not None
    # the faults hit running work, and the restarted instance took over
    assert sum(f["in_flight"] for f in sf.values()) >= 1
    assert rc == 0
