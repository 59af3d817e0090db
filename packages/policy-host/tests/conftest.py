from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from llama_orch.core.policy_config import PolicyModule
from llama_orch.policy_sdk.abi import (
    AdmissionSnapshot,
    PlacementSnapshot,
    PoolLoad,
    ReplicaInfo,
    TaskInfo,
    TenantBudget,
)

FIXTURES = Path(__file__).parent / "fixtures"


def module(name: str, path: Path | None = None, **kw: Any) -> PolicyModule:
    path = path or FIXTURES / f"{name}.wat"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return PolicyModule(name=name, path=str(path), sha256=digest, **kw)


def task(**kw: Any) -> TaskInfo:
    base: dict[str, Any] = dict(
        task_id="t-1",
        tenant="acme",
        priority="interactive",
        workload="completion",
        pool_id="p0",
        max_tokens=16,
    )
    base.update(kw)
    return TaskInfo(**base)


def admission(marked: bool = False, **task_kw: Any) -> AdmissionSnapshot:
    """An admission snapshot; ``marked`` puts the fixtures' trigger byte '~' in it."""
    if marked:
        task_kw.setdefault("task_id", "t-~")
    return AdmissionSnapshot(
        task=task(**task_kw),
        pool=PoolLoad(pool_id="p0", queued=1, capacity=8, running=1, slots=2, ready_replicas=1),
        tenant=TenantBudget(tenant="acme", in_flight=1, pool_in_flight=1),
    )


def placement(ids: list[str], **task_kw: Any) -> PlacementSnapshot:
    return PlacementSnapshot(
        task=task(**task_kw),
        replicas=[ReplicaInfo(replica_id=r, free_slots=1, slots=1, queued_tokens=0) for r in ids],
    )


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
