"""Steps of issue #22's journeys: fairness bounds, backpressure with Retry-After,
quotas and security (keys, roles, tenant isolation)."""

from __future__ import annotations

import threading

import pytest
from _world import (
    World,
    admin_tasks,
    as_who,
    auth_doc,
    http,
    mock_pool,
    start_keyed,
    start_order,
    step,
    submit_as,
)

WEIGHTED = (
    'an orchestratord with tenants "{a}" of weight {wa:d} and "{b}" of weight {wb:d}'
    " on a one-slot pool"
)


@step("given", WEIGHTED)
def weighted_tenants(world: World, a: str, wa: int, b: str, wb: int) -> None:
    doc = {
        "auth": auth_doc(a, b),
        "admission": {"queue_capacity": 64},
        "scheduling": {"tenants": {a: {"weight": wa}, b: {"weight": wb}}},
        "pools": [mock_pool("main", slots=1, token_delay_ms=4, eos_after=3)],
    }
    start_keyed(world, doc, ["main"])


@step("when", '"{a}" and "{b}" each submit {n:d} batch tasks at once')
def both_submit(world: World, a: str, b: str, n: int) -> None:
    # one long task first holds the slot, so every later one is queued together
    holder = submit_as(world, a, max_tokens=1, priority="interactive")
    assert holder.status == 202
    for _ in range(n):
        for who in (a, b):
            assert submit_as(world, who, max_tokens=3, priority="batch").status == 202


@step("when", '"{who}" submits {n:d} batch tasks and then 1 interactive task')
def batch_then_interactive(world: World, who: str, n: int) -> None:
    for _ in range(n):
        assert submit_as(world, who, max_tokens=3, priority="batch").status == 202
    assert submit_as(world, who, max_tokens=3, priority="interactive").status == 202
    world.notes["interactive"] = world.task_id


@step("when", "every task has ended")
def all_ended(world: World) -> None:
    for _ in range(1200):
        if all(t["state"] in ("completed", "failed", "canceled") for t in admin_tasks(world)):
            return
        threading.Event().wait(0.05)
    pytest.fail("tasks still running after 60 s")


def _batch_starts(world: World) -> list[str]:
    return [t["tenant"] for t in start_order(admin_tasks(world)) if t["priority"] == "batch"]


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
    order = start_order(admin_tasks(world))
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
        "auth": auth_doc(who),
        "scheduling": {"tenants": {who: {"max_concurrent": n}}},
        "pools": [mock_pool("main", slots=1, token_delay_ms=50)],
    }
    start_keyed(world, doc, ["main"])


@step("when", '"{who}" submits {n:d} long tasks')
def long_tasks(world: World, who: str, n: int) -> None:
    world.notes["statuses"] = []
    for _ in range(n):
        answer = submit_as(world, who, max_tokens=400)
        world.notes["statuses"].append(answer.status)
        if answer.status == 202:
            world.background.append(world.task_id)


@step("then", 'the third answer is 429 with policy_label "{label}"')
def third_refused(world: World, label: str) -> None:
    assert world.notes["statuses"] == [202, 202, 429], world.notes
    assert world.answer is not None and world.answer.body["policy_label"] == label


@step("given", 'an orchestratord with tenant keys "{a}" and "{b}" and an admin key')
def keyed_orchestratord(world: World, a: str, b: str) -> None:
    doc = {"auth": auth_doc(a, b), "pools": [mock_pool("main", token_delay_ms=2, eos_after=4)]}
    start_keyed(world, doc, ["main"])


@step("when", '"{who}" submits a task')
def submits_as(world: World, who: str) -> None:
    submit_as(world, who, max_tokens=4)


@step("then", "the answer asks for a Bearer token")
def bearer_challenge(world: World) -> None:
    assert world.answer is not None
    assert world.answer.headers["WWW-Authenticate"].startswith("Bearer")


@step("then", """"{who}" gets 404 for that task's status, stream and cancel""")
def foreign_404(world: World, who: str) -> None:
    base = f"{world.url}/v1/tasks/{world.task_id}"
    for method, path in (("GET", ""), ("GET", "/stream"), ("POST", "/cancel")):
        answer = http(method, base + path, headers=as_who(who))
        assert (answer.status, answer.body["code"]) == (404, "NOT_FOUND"), (path, answer)


@step("then", """"{who}" gets 200 for that task's status""")
def own_200(world: World, who: str) -> None:
    answer = http("GET", f"{world.url}/v1/tasks/{world.task_id}", headers=as_who(who))
    assert answer.status == 200 and answer.body["task_id"] == world.task_id, answer


@step("when", '"{who}" calls {method} {path}')
def calls(world: World, who: str, method: str, path: str) -> None:
    body = {"prompt": "x"} if method == "POST" else None
    world.answer = http(method, world.url + path, body, headers=as_who(who))


@step("then", '"{who}" lists tasks of tenants "{a}" and "{b}"')
def admin_lists(world: World, who: str, a: str, b: str) -> None:
    answer = http("GET", world.url + "/v1/admin/tasks", headers=as_who(who))
    assert answer.status == 200, answer
    tenants = {t["tenant"] for t in answer.body["tasks"]}
    assert tenants == {a, b}, answer.body
    ids = {t["task_id"] for t in answer.body["tasks"]}
    assert ids == set(world.owned[a] + world.owned[b])
