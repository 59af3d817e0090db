"""Placement policies and migration through orchestratord with mock engines (ORCH-2310..2336).

Two mock replicas share one pool's options, so a ``reset_after`` fault strikes
on both: the first reset migrates the task (when the limit allows), the
continuation either finishes within the remaining ``max_tokens`` or is reset
again. The real-engine proof (kill -9 of a llama-server) is in
``test_pools_supervision_real.py``.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

SYSTEM = "You are a careful assistant who answers briefly. " * 20


def _terminal(events: list[tuple[int, str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(e[1], e[2]) for e in events if e[1] in ("end", "error")]


async def _submit(run: Any, **body: Any) -> str:
    resp = await run.submit(**body)
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["task_id"])


def _two_mocks(mock_config: Any, **pool: Any) -> Any:
    return mock_config(endpoints=["mock://0", "mock://1"], **pool)


@pytest.mark.parametrize("limit", [1, 0])
async def test_a_reset_task_migrates_once_or_ends_worker_reset(
    mock_config, start_orchestrator, limit
):
    """ORCH-2330..2334, ORCH-2336: a reset after 3 of 5 tokens moves the task to the
    other replica, where the continuation finishes: indices 0..4, one ``migrated``
    frame, one ``end``. With ``migration_limit: 0`` it ends WORKER_RESET."""
    run = await start_orchestrator(
        _two_mocks(
            mock_config,
            migration_limit=limit,
            adapter_options={"fail": "reset_after:3", "token_delay_ms": 2, "slots": 2},
        )
    )
    await _until(lambda: len(run.orch.pools["mock"].ready_replicas()) == 2)
    tid = await _submit(run, prompt="count", max_tokens=5, seed=7)
    events = await run.events(tid)
    tokens = [e[2] for e in events if e[1] == "token"]
    migrated = [e for e in events if e[1] == "metrics" and e[2].get("migrated")]
    terminal = _terminal(events)
    assert len(terminal) == 1
    text = await run.metrics_text()
    if limit == 0:
        assert terminal[0][0] == "error" and terminal[0][1]["code"] == "WORKER_RESET"
        assert migrated == [] and [t["i"] for t in tokens] == [0, 1, 2]
        assert "migrations_total{" not in text
        return
    assert terminal[0][0] == "end", terminal
    assert [t["i"] for t in tokens] == [0, 1, 2, 3, 4]
    assert len(migrated) == 1
    assert [e[1] for e in events].count("started") == 1
    assert 'migrations_total{engine="mock",pool_id="mock",result="migrated"} 1.0' in text


async def test_the_migration_limit_bounds_moves(mock_config, start_orchestrator):
    """ORCH-2332: a continuation reset again past the limit ends WORKER_RESET."""
    run = await start_orchestrator(
        _two_mocks(mock_config, adapter_options={"fail": "reset_after:2", "token_delay_ms": 2})
    )
    await _until(lambda: len(run.orch.pools["mock"].ready_replicas()) == 2)
    tid = await _submit(run, prompt="count", max_tokens=10)
    events = await run.events(tid)
    terminal = _terminal(events)
    assert len(terminal) == 1 and terminal[0][1]["code"] == "WORKER_RESET"
    assert [e[2]["i"] for e in events if e[1] == "token"] == [0, 1, 2, 3]
    assert sum(1 for e in events if e[1] == "metrics" and e[2].get("migrated")) == 1
    text = await run.metrics_text()
    assert 'migrations_total{engine="mock",pool_id="mock",result="limit"} 1.0' in text


async def test_prefix_aware_places_on_the_warm_replica(mock_config, start_orchestrator):
    """ORCH-2302, ORCH-2312, ORCH-2320: a prompt sharing a long prefix with a task
    running on r0 goes to r0 under prefix-aware (least-loaded would pick the idle r1)."""
    run = await start_orchestrator(
        _two_mocks(
            mock_config,
            placement={"policy": "prefix-aware", "block_chars": 64, "learn": "dispatch"},
            adapter_options={"token_delay_ms": 20, "slots": 4},
        )
    )
    pool = run.orch.pools["mock"]
    await _until(lambda: len(pool.ready_replicas()) == 2)
    first = await _submit(run, prompt=SYSTEM + "user: first question", max_tokens=200)
    await run.until(lambda: run.orch.get(first).state == "running")
    warm = run.orch.get(first).replica_id
    host = _SnapshotHost()
    run.orch.policies = host  # ORCH-2315: what a placement policy would be shown
    second = await _submit(run, prompt=SYSTEM + "user: second question", max_tokens=40)
    other = await _submit(run, prompt="unrelated " * 40, max_tokens=2)
    await run.events(second)
    await run.events(other)
    assert run.orch.get(second).replica_id == warm
    assert run.orch.get(other).replica_id != warm  # no hit: least-loaded
    run.orch.policies = None
    shown = {r.replica_id: r.prefix_hit_tokens for r in host.snapshots[0].replicas}
    assert shown[warm] >= len(SYSTEM) // 4 - 16 and max(shown.values()) == shown[warm]
    assert min(shown.values()) == 0 and len(host.snapshots) == 2
    # ORCH-2302: the completed task's answer was learned too: a next turn that
    # starts with prompt + answer matches beyond the prompt on that replica only
    answer = "".join(e[2]["t"] for e in await run.events(second) if e[1] == "token")
    assert answer
    follow = SimpleNamespace(
        task_id="next-turn",
        request=SimpleNamespace(prompt=SYSTEM + "user: second question" + answer + "x" * 200),
    )
    grown = run.orch.placer.expected_hits(pool, follow)  # type: ignore[arg-type]
    index = run.orch.placer.index(pool)
    prompt_only = index.tokens(len(index.hashes(SYSTEM + "user: second question")))
    assert grown[warm] > prompt_only and grown[warm] > max(v for k, v in grown.items() if k != warm)
    run.orch.cancel(first)
    text = await run.metrics_text()
    for decision in ("prefix", "load"):
        series = (
            f'placement_decisions_total{{decision="{decision}",engine="mock",'
            f'placement="prefix-aware",pool_id="mock"}}'
        )
        assert series in text, (decision, text)


class _SnapshotHost:
    """Stands in for the policy host: records placement snapshots, scores none."""

    has_admission = False

    def __init__(self) -> None:
        self.cfg = SimpleNamespace(placement="record", replica_labels={})
        self.snapshots: list[Any] = []

    def placement(self, snapshot: Any) -> Any:
        self.snapshots.append(snapshot)
        return SimpleNamespace(refused=False, replica_id=None)


async def _until(pred: Any, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "timed out"
        await asyncio.sleep(0.02)


async def test_engine_prefix_counters_become_prefix_hit_ratio():
    """ORCH-2322: the scrape turns an engine's own hit/query counters into the
    per-replica ratio; an engine without them exports no series."""
    from llama_orch.core.adapter_api import EngineMetrics
    from llama_orch.core.replica import ReplicaState
    from llama_orch.orchestratord.telemetry import EngineScraper

    class _Adapter:
        def __init__(self, m: EngineMetrics) -> None:
            self.m = m

        async def metrics(self) -> EngineMetrics:
            return self.m

    def _replica(rid: str, m: EngineMetrics) -> Any:
        state = ReplicaState(pool_id="p", replica_id=rid, engine="llamacpp-http", status="ready")
        return SimpleNamespace(state=state, adapter=_Adapter(m))

    counted = EngineMetrics(prefix_cache_hits_total=242.0, prefix_cache_queries_total=485.0)
    pool = SimpleNamespace(
        id="p",
        ready_replicas=lambda: [_replica("p-e0", counted), _replica("p-e1", EngineMetrics())],
    )
    scraper = EngineScraper([pool], 1.0)  # type: ignore[list-item]
    await scraper.scrape_once()
    ((ratio, attrs),) = scraper.prefix_hits()
    assert ratio == pytest.approx(242 / 485) and attrs["replica_id"] == "p-e0"
