"""One catalog across orchestratord instances on the shared Valkey store (ORCH-3383).

Two orchestratord applications in this process, each with its own (unused)
catalog file, on one real valkey-server with ``state: {backend: valkey}``:
what one registers, transitions, promotes or rolls back the other sees, the
canary credit is one counter for both, and two conflicting transitions made at
once on the two instances cannot both pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.testing_engines.valkey import valkey_server

from .test_catalog import _sample

V1, V2, V3 = (b"GGUF" + os.urandom(4096) for _ in range(3))
D1, D2, D3 = (hashlib.sha256(v).hexdigest() for v in (V1, V2, V3))
I1, I2, I3 = D1[:16], D2[:16], D3[:16]


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with valkey_server(tmp_path_factory.mktemp("valkey")) as url:
        yield url


def _config(tmp_path: Path, name: str, url: str, prefix: str) -> Config:
    pool = {"engine": "mock", "endpoints": ["mock://0"], "adapter_options": {"token_delay_ms": 0}}
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 1.0},
        "auth": {"enabled": False},
        "admission": {"queue_capacity": 256},
        "state": {"backend": "valkey", "url": url, "key_prefix": prefix, "lease_ms": 1000},
        "catalog": {"path": str(tmp_path / f"{name}.sqlite3"), "trust": {"mode": "warn"}},
        "pools": [
            {"id": "stable", "model": "tiny:stable", **pool},
            {"id": "canary", "model": "tiny:next", **pool},
        ],
    }
    return msgspec.convert(doc, Config)


async def _until(pred: Any, what: str, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


async def test_two_instances_share_one_catalog(
    start_orchestrator: Any, valkey_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH-3383: registrations, transitions, promote/rollback and the canary credit
    are the shared store's; conflicting writes are checked against each other."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    prefix = f"cat-{uuid.uuid4().hex[:8]}"
    a = await start_orchestrator(_config(tmp_path, "a", valkey_url, prefix))
    b = await start_orchestrator(_config(tmp_path, "b", valkey_url, prefix))
    api = {id(run): run.url + "/v1/catalog/models" for run in (a, b)}

    async def register(run: Any, data: bytes, tag: str, state: str = "draft") -> None:
        path = tmp_path / f"{tag}.gguf"
        path.write_bytes(data)
        body = {"name": "tiny", "ref": str(path), "tags": [tag], "state": state}
        resp = await run.http.post(api[id(run)], json=body)
        assert resp.status == 201, await resp.text()

    async def states(run: Any) -> dict[str, str]:
        async with run.http.get(api[id(run)]) as r:
            return {m["id"]: m["state"] for m in (await r.json())["models"]}

    async def post(run: Any, mid: str, action: str, **body: Any) -> tuple[int, Any]:
        async with run.http.post(f"{api[id(run)]}/{mid}/{action}", json=body) as r:
            return r.status, await r.json()

    await register(a, V1, "stable", "active")
    assert await states(b) == {I1: "active"}  # at once: B reads the store's version
    await register(b, V2, "next")
    assert await states(a) == {I1: "active", I2: "draft"}
    # the same bytes again, on the other instance: refused naming the entry
    resp = await a.http.post(api[id(a)], json={"name": "tiny", "ref": str(tmp_path / "next.gguf")})
    assert resp.status == 400 and I2 in (await resp.json())["message"]
    assert not (tmp_path / "a.sqlite3").exists() and not (tmp_path / "b.sqlite3").exists()

    status, body = await post(a, I2, "state", state="canary", weight=0.2)
    assert status == 200, body
    # B's admission reads its memory, refreshed by the store's change notification
    seen_after = await _until(lambda: b.orch.catalog.catalog.canary_of("tiny") is not None, "B")

    async def task(run: Any) -> str:
        resp = await run.submit(model_ref="tiny", max_tokens=2)
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["task_id"])

    async def pools(ids: list[tuple[Any, str]]) -> dict[str, int]:
        split: dict[str, int] = {}
        for run, tid in ids:  # every accepted task: exactly one terminal event
            events = await run.events(tid)
            assert [e[1] for e in events if e[1] in ("end", "error")] == ["end"], events
            async with run.http.get(f"{run.url}/v1/tasks/{tid}") as r:
                pid = (await r.json())["pool_id"]
            split[pid] = split.get(pid, 0) + 1
        return split

    # One credit for both: 2 tasks on A then 3 on B reach 1.0 on the fifth task
    # (separate credits would stop at 0.4 and 0.6: no canary at all).
    five = [(a, await task(a)), (a, await task(a))] + [(b, await task(b)) for _ in range(3)]
    assert await pools(five) == {"stable": 4, "canary": 1}
    ids = []
    for n in range(100):  # alternating instances: exactly one in five on the canary
        run = a if n % 2 else b
        ids.append((run, await task(run)))
    split = await pools(ids)
    assert split == {"stable": 80, "canary": 20}, split
    # ORCH-3380 on both instances together: what ran, per version
    scrapes = [(await r.metrics_text()) for r in (a, b)]
    ran = sum(
        _sample(s, "catalog_tasks_total", model_id=I2, lifecycle="canary", outcome="completed")
        for s in scrapes
    )
    assert ran == 21  # the five, then the hundred

    status, body = await post(b, I2, "promote")
    assert status == 200, body
    assert await states(a) == {I1: "deprecated", I2: "active"}
    await _until(lambda: a.orch.catalog.catalog.resolve("tiny:next").state == "active", "A")  # type: ignore[union-attr]
    assert await pools([(a, await task(a)) for _ in range(3)]) == {"canary": 3}
    status, body = await post(a, I2, "rollback")
    assert status == 200, body
    assert await states(b) == {I1: "active", I2: "canary"}
    async with b.http.get(f"{api[id(b)]}/{I2}") as r:
        entry = await r.json()
    assert [(h["from_state"], h["to_state"]) for h in entry["history"]] == [
        (None, "draft"),
        ("draft", "canary"),
        ("canary", "active"),
        ("active", "canary"),
    ]

    # Two conflicting transitions at once, one per instance: a name has one canary.
    assert (await post(b, I2, "rollback"))[0] == 200  # canary -> draft
    await register(a, V3, "v3")
    results = await asyncio.gather(
        post(a, I2, "state", state="canary", weight=0.5),
        post(b, I3, "state", state="canary", weight=0.5),
    )
    assert sorted(status for status, _ in results) == [200, 400], results
    final = await states(a)
    assert sorted(final.values()) == ["active", "canary", "draft"], final
    assert final == await states(b)
    print(f"B's admission saw A's canary {seen_after * 1000:.1f} ms after the 200")


def _entry(data: bytes, tag: str) -> Any:
    from llama_orch.orchestratord.catalog import Entry, Provenance

    digest = hashlib.sha256(data).hexdigest()
    return Entry(
        id=digest[:16],
        name="tiny",
        tags=[tag],
        digest=digest,
        size=len(data),
        format="gguf",
        ref=f"/nowhere/{tag}.gguf",
        provenance=Provenance("file", f"file:///nowhere/{tag}.gguf"),
    )


@pytest.mark.parametrize("backend", ["sqlite", "valkey"])
def test_a_write_that_lost_the_race_is_checked_again(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """ORCH-3383: between reading the catalog and committing, another instance makes a
    conflicting change; the commit is refused, the write is computed again on the new
    catalog, and its check refuses it (one canary per name)."""
    from llama_orch.core.errors import InvalidParams
    from llama_orch.orchestratord.catalog import Catalog

    prefix = f"race-{uuid.uuid4().hex[:8]}"

    def open_catalog() -> Catalog:
        cat = Catalog(str(tmp_path / "catalog.sqlite3"))  # sqlite: both on one file
        if backend == "valkey":
            from llama_orch.state_valkey.catalog import ValkeyCatalog

            cat.use(ValkeyCatalog(request.getfixturevalue("valkey_url"), prefix))
        return cat

    x, y = open_catalog(), open_catalog()
    for data, tag in ((V1, "stable"), (V2, "next"), (V3, "v3")):
        x.add(_entry(data, tag))
    y.refresh()
    assert len(y.list()) == 3
    real_commit = y.backend.commit
    commits: list[int | None] = []

    def commit_after_the_other(expected: int, put: Any, delete: Any) -> int | None:
        if not commits:  # the other instance writes first, after y computed its change
            x.transition(I3, "canary", weight=0.5)
        commits.append(real_commit(expected, put, delete))
        return commits[-1]

    y.backend.commit = commit_after_the_other  # type: ignore[method-assign]
    with pytest.raises(InvalidParams, match="already has a canary entry"):
        y.transition(I2, "canary", weight=0.5)
    assert commits == [None]  # refused once, then the recomputed change raised
    assert {e.id: e.state for e in y.list()} == {I1: "draft", I2: "draft", I3: "canary"}
    assert {e.id: e.state for e in x.list()} == {e.id: e.state for e in y.list()}
    x.backend.close()
    y.backend.close()


def test_an_unreachable_store_is_a_503_not_a_crash() -> None:
    """ORCH-3383 with ORCH-2516: reads, writes and the canary credit of a catalog whose
    store cannot be reached raise StoreUnavailable (503 with Retry-After)."""
    from llama_orch.core.state_store import StoreUnavailable
    from llama_orch.state_valkey.catalog import ValkeyCatalog
    from llama_orch.testing.fake_http import free_port_url

    gone = ValkeyCatalog(free_port_url().replace("http://", "redis://"), socket_timeout=1.0)
    for call in (
        gone.version,
        gone.load,
        lambda: gone.commit(0, {}, []),
        lambda: gone.take_credit("tiny", 0.2),
    ):
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert caught.value.status_code == 503 and caught.value.retry_after_ms == 1000
    gone.close()
