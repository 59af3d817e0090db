"""The world of the BDD features (pytest-bdd): orchestratord in-process on its own
thread and event loop (pytest-bdd steps are synchronous), served by its real lifespan
on a free loopback port, and the HTTP helpers every step module uses. Each step is
registered through :func:`step`, which also records its parser in ``STEP_DEFS`` so
that ``test_steps_check.py`` can prove that every feature step matches exactly one
definition (no undefined, no ambiguous steps).
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import msgspec
import pytest
from llama_orch.core.config import Config
from llama_orch.orchestratord.serve import serve
from pytest_bdd import given, parsers, then, when

STEP_DEFS: list[tuple[str, parsers.StepParser]] = []
_KINDS = {"given": given, "when": when, "then": then}


def step(kind: str, pattern: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    parser = parsers.parse(pattern)
    STEP_DEFS.append((kind, parser))
    return _KINDS[kind](parser)


# -- orchestratord on a thread ------------------------------------------------


class Orchestratord:
    """orchestratord served on a background event loop; ``stop()`` ends it."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="orchestratord", daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            self.stop()
            raise RuntimeError(f"orchestratord did not start: {self._error}")

    def _run(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

            def listening(url: str, _orch: object) -> None:
                self.url = url
                self._ready.set()

            await serve(self._config, shutdown_trigger=self._stop.wait, on_listening=listening)

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the constructor or stop()
            self._error = exc
        finally:
            self._ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "orchestratord did not stop within 60 s"


@dataclass
class Answer:
    status: int
    headers: Message  # case-insensitive, as sent by the server
    body: Any


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, hdrs, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, exc.headers, exc.read()
    ctype = hdrs.get("Content-Type", "")
    return Answer(status, hdrs, json.loads(raw) if raw and "json" in ctype else raw)


def read_events(url: str, limit: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """SSE events (name, data) to the end of the stream or ``limit`` events."""
    events: list[tuple[str, dict[str, Any]]] = []
    name, data = "", ""
    with urllib.request.urlopen(url, timeout=60) as resp:
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = line.split(":", 1)[1].strip()
            elif not line and name:
                events.append((name, json.loads(data)))
                name, data = "", ""
                if limit is not None and len(events) >= limit:
                    break
    return events


@dataclass
class World:
    """What the scenario has done so far."""

    orch: Orchestratord | None = None
    answer: Answer | None = None
    task_id: str = ""
    session_id: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    streams: list[bytes] = field(default_factory=list)
    started: list[dict[str, Any]] = field(default_factory=list)
    seen_at_cancel: int = 0
    background: list[str] = field(default_factory=list)
    model_digest: str = ""
    owned: dict[str, list[str]] = field(default_factory=dict)  # task ids by key name
    notes: dict[str, Any] = field(default_factory=dict)  # what later steps check

    @property
    def url(self) -> str:
        assert self.orch is not None, "no orchestratord started"
        return self.orch.url

    def submit(self, **body: Any) -> Answer:
        self.answer = http("POST", self.url + "/v1/tasks", body)
        if self.answer.status == 202:
            self.task_id = self.answer.body["task_id"]
        return self.answer

    def stream_url(self, task_id: str | None = None) -> str:
        return f"{self.url}/v1/tasks/{task_id or self.task_id}/stream"


def mock_pool(pool_id: str, **options: Any) -> dict[str, Any]:
    return {
        "id": pool_id,
        "engine": "mock",
        "model": "mock-model",
        "endpoints": ["mock://0"],
        "adapter_options": options,
    }


def start_plain(world: World, doc: dict[str, Any], pools: list[str]) -> None:
    doc["server"] = {"port": 0, "shutdown_grace_s": 2.0}
    doc.setdefault("auth", {"enabled": False})  # ORCH-8001: explicit, tests only
    world.orch = Orchestratord(msgspec.convert(doc, Config))
    for pool in pools:
        for _ in range(1200):
            health = http("GET", f"{world.url}/v1/pools/{pool}/health").body
            if health["ready"]:
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail(f"pool {pool} not ready: {health}")


# Keys are made here for the test run only; the config holds their hashes.

KEYS = {name: f"llo_bdd-{name}-" + name[0] * 40 for name in ("alpha", "beta", "admin")}
KEYS |= {name: f"llo_bdd-{name}-" + "k" * 40 for name in ("heavy", "light", "capped")}


def key_hash(key: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def auth_doc(*tenants: str) -> dict[str, Any]:
    keys = [{"id": t, "role": "tenant", "tenant": t, "hash": key_hash(KEYS[t])} for t in tenants]
    keys.append({"id": "admin", "role": "admin", "hash": key_hash(KEYS["admin"])})
    return {"enabled": True, "keys": keys}


def as_who(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"} if who in KEYS else {}


def wait_ready(world: World, pool: str, timeout_s: float = 240.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        health = http("GET", f"{world.url}/v1/pools/{pool}/health", headers=as_who("admin")).body
        if health["ready"] or time.monotonic() > deadline:
            return dict(health)
        threading.Event().wait(0.1)


def start_keyed(world: World, doc: dict[str, Any], pools: list[str]) -> None:
    doc["server"] = {"port": 0, "shutdown_grace_s": 2.0}
    world.orch = Orchestratord(msgspec.convert(doc, Config))
    for pool in pools:
        assert wait_ready(world, pool, 60)["ready"], pool


def submit_as(world: World, who: str, **body: Any) -> Answer:
    body.setdefault("prompt", "x")
    answer = http("POST", world.url + "/v1/tasks", body, headers=as_who(who))
    world.answer = answer
    if answer.status == 202:
        world.task_id = answer.body["task_id"]
        world.owned.setdefault(who, []).append(world.task_id)
    return answer


def admin_tasks(world: World) -> list[dict[str, Any]]:
    answer = http("GET", world.url + "/v1/admin/tasks?limit=1000", headers=as_who("admin"))
    assert answer.status == 200, answer
    return list(answer.body["tasks"])


def start_order(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    started = [t for t in tasks if t["state"] == "completed"]
    return sorted(started, key=lambda t: (t["created_ms"] + t["queue_wait_ms"], t["created_ms"]))


def read_events_as(world: World, who: str) -> list[tuple[str, dict[str, Any]]]:
    req = urllib.request.Request(world.stream_url(), headers=as_who(who))
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    return events
