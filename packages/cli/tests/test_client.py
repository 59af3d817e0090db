"""OrchClient against the fake orchestratord (ORCH-5001, ORCH-5002, ORCH-5004)."""

from __future__ import annotations

import socket

import pytest
from llama_orch.cli import (
    ApiError,
    ConnectionFailed,
    InvalidRequest,
    OrchClient,
    StreamInterrupted,
)
from llama_orch.core.api import EndEvent, QueuedEvent, StartedEvent, TokenEvent
from llama_orch.core.errors import ErrorCode


async def collect(orch: OrchClient, task_id: str, **kw: object) -> list[tuple[int, object]]:
    return [item async for item in orch.stream(task_id, **kw)]  # type: ignore[arg-type]


async def test_submit_returns_task_accepted_and_stream_ends_with_end(fake) -> None:
    async with OrchClient(fake.url, correlation_id="corr-test") as orch:
        accepted = await orch.submit(prompt="hello", max_tokens=5, seed=1)
        events = await collect(orch, accepted.task_id)
    assert fake.tasks[accepted.task_id].request.seed == 1
    ids = [event_id for event_id, _ in events]
    assert ids == list(range(len(events)))
    assert isinstance(events[0][1], StartedEvent)
    assert [e.t for _, e in events if isinstance(e, TokenEvent)] == [
        "The",
        " quick",
        " brown",
        " fox",
        " jumps",
    ]
    assert isinstance(events[-1][1], EndEvent)
    assert orch.last_correlation_id == "corr-stream"


async def test_submit_429_raises_api_error_with_backoff_headers(fake) -> None:
    fake.busy = True
    async with OrchClient(fake.url, max_retries=0) as orch:
        with pytest.raises(ApiError) as info:
            await orch.submit(prompt="hello")
    err = info.value
    assert err.status == 429
    assert err.code == "ADMISSION_REJECT"
    assert err.body is not None and err.body.code is ErrorCode.ADMISSION_REJECT
    assert err.body.policy_label == "reject"
    assert err.retry_after_s == 2.0
    assert err.backoff_ms == 1500
    assert err.retriable
    assert err.correlation_id and err.correlation_id.startswith("corr-")


async def test_stream_decodes_queued_events(fake) -> None:
    """ORCH-1963: the typed client yields ``queued`` events as QueuedEvent."""
    async with OrchClient(fake.url) as orch:
        accepted = await orch.submit(prompt="wait", max_tokens=1)
        events = [e for _, e in await collect(orch, accepted.task_id)]
    queued = [e for e in events if isinstance(e, QueuedEvent)]
    assert [q.queue_position for q in queued] == [2, 1, 0]
    assert isinstance(events[len(queued)], StartedEvent)


async def test_invalid_fields_fail_locally_without_a_request(fake) -> None:
    async with OrchClient(fake.url) as orch:
        with pytest.raises(InvalidRequest, match="seed"):
            await orch.submit(prompt="x", seed=-1)
        with pytest.raises(InvalidRequest, match="bogus"):
            await orch.submit(prompt="x", bogus=True)
    assert fake.tasks == {}


async def test_resume_after_dropped_connection_yields_each_event_once_in_order(fake) -> None:
    """ORCH-5004: the drop happens mid-frame; the reconnect sends Last-Event-ID."""
    fake.drop_at = 4
    async with OrchClient(fake.url, reconnect_delay=0) as orch:
        accepted = await orch.submit(prompt="hello")
        events = await collect(orch, accepted.task_id, resume=True)
    expected = fake.tasks[accepted.task_id].events
    assert [event_id for event_id, _ in events] == list(range(len(expected)))
    assert [event for _, event in events] == expected
    assert fake.stream_requests == [None, "3"]


async def test_resume_skips_events_the_server_repeats(fake) -> None:
    fake.drop_at = 6
    fake.ignore_last_event_id_once = True  # the reconnect replays from id 0
    async with OrchClient(fake.url, reconnect_delay=0) as orch:
        accepted = await orch.submit(prompt="hello")
        events = await collect(orch, accepted.task_id, resume=True)
    assert fake.stream_requests == [None, "5"]
    assert [event for _, event in events] == fake.tasks[accepted.task_id].events


async def test_stream_without_resume_raises_then_continues_from_last_event_id(fake) -> None:
    fake.drop_at = 5
    async with OrchClient(fake.url, reconnect_delay=0) as orch:
        accepted = await orch.submit(prompt="hello")
        first = []
        with pytest.raises(StreamInterrupted) as info:
            async for item in orch.stream(accepted.task_id):
                first.append(item)
        assert info.value.last_event_id == 4
        rest = await collect(orch, accepted.task_id, last_event_id=4)
    assert [event_id for event_id, _ in first + rest] == list(
        range(len(fake.tasks[accepted.task_id].events))
    )


async def test_stream_unknown_task_is_api_error(fake) -> None:
    async with OrchClient(fake.url) as orch:
        with pytest.raises(ApiError) as info:
            await collect(orch, "nope")
    assert info.value.status == 404 and info.value.code == "NOT_FOUND"


async def test_cancel_posts_to_the_cancel_endpoint(fake) -> None:
    """ORCH-5002."""
    async with OrchClient(fake.url) as orch:
        await orch.cancel("task-123")
    assert fake.cancels == ["task-123"]


async def test_read_endpoints_decode(fake) -> None:
    async with OrchClient(fake.url) as orch:
        accepted = await orch.submit(prompt="hello")
        status = await orch.task(accepted.task_id)
        session = await orch.session("s-1")
        await orch.delete_session("s-1")
        caps = await orch.capabilities()
        health = await orch.pool_health("default")
    assert status.task_id == accepted.task_id and status.state == "completed"
    assert session.max_turns == 8
    assert caps.pools[0].id == "default" and caps.cpu_inference
    assert health.ready and health.pool_id == "default"


async def test_unready_pool_health_with_503_is_still_a_health_document(fake) -> None:
    fake.ready_after_polls = 5
    async with OrchClient(fake.url) as orch:
        health = await orch.pool_health("default")
    assert not health.ready and health.replicas[0]["state"] == "starting"


async def test_unreachable_server_is_connection_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with OrchClient(f"http://127.0.0.1:{port}", timeout=5) as orch:
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            await orch.capabilities()


async def test_submit_stream_is_one_request_and_resumes_on_the_stream_route(fake) -> None:
    """ORCH-2713: admit and stream in one POST; a drop resumes with Last-Event-ID."""
    async with OrchClient(fake.url, reconnect_delay=0) as orch:
        task = await orch.submit_stream(prompt="hello")
        events = [item async for item in task.events()]
        assert fake.stream_requests == ["submit"]
        assert [event for _, event in events] == fake.tasks[task.task_id].events
        fake.drop_at = 4
        task = await orch.submit_stream(prompt="hello")
        events = [item async for item in task.events()]
    assert fake.stream_requests == ["submit", "submit", "3"]
    assert [event_id for event_id, _ in events] == list(range(len(events)))
    assert [event for _, event in events] == fake.tasks[task.task_id].events


async def test_submit_stream_refusal_raises_api_error(fake) -> None:
    fake.busy = True
    async with OrchClient(fake.url, max_retries=0) as orch:
        with pytest.raises(ApiError) as info:
            await orch.submit_stream(prompt="hello")
    assert info.value.status == 429 and info.value.backoff_ms == 1500


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refused_submit_is_sent_again_after_the_delay_with_one_key(fake, stream) -> None:
    """ORCH-5010: two 429s naming 300 ms, then admitted. Each retry comes after the
    delay the server gave (not before it, and not much later), and every attempt
    carries the same Idempotency-Key, so the server can keep the client's place."""
    fake.busy_for = 2
    async with OrchClient(fake.url) as orch:
        if stream:
            task = await orch.submit_stream(prompt="hello")
            events = [ev async for _, ev in task.events()]
            assert isinstance(events[-1], EndEvent)
        else:
            await orch.submit(prompt="hello")
        assert orch.retry_waits == [0.3, 0.3]
    (t0, k0), (t1, k1), (t2, k2) = fake.submits
    assert k0 is not None and len(k0) == 32 and k0 == k1 == k2
    assert 0.3 <= t1 - t0 < 1.3 and 0.3 <= t2 - t1 < 1.3


async def test_retries_are_bounded_and_keys_differ_per_submit(fake) -> None:
    """ORCH-5010: after max_retries the refusal is raised; a new submit is a new key."""
    fake.busy_for = 5
    async with OrchClient(fake.url, max_retries=1) as orch:
        with pytest.raises(ApiError) as info:
            await orch.submit(prompt="hello")
        assert info.value.status == 429 and len(fake.submits) == 2
        with pytest.raises(ApiError):
            await orch.submit(prompt="again")
    keys = [k for _, k in fake.submits]
    assert keys[0] == keys[1] and keys[2] == keys[3] and keys[0] != keys[2]


async def test_a_delay_over_the_cap_is_not_waited(fake) -> None:
    """ORCH-5010: a refusal whose delay exceeds max_retry_wait_s is raised at once."""
    fake.busy = True  # Retry-After 2 s (body: 1.5 s)
    async with OrchClient(fake.url, max_retry_wait_s=1.0) as orch:
        with pytest.raises(ApiError):
            await orch.submit(prompt="hello")
    assert len(fake.submits) == 1
