"""OrchQueue v1 data plane against the mock adapter (fast; the real-engine
counterparts live in test_service_real_llamacpp.py)."""

from __future__ import annotations

import asyncio
import re
import uuid

import msgspec
from llama_orch.core.api import API_VERSION


async def test_submit_stream_started_tokens_end(start_orchestrator, mock_config):
    """ORCH-1201: started, token*, metrics*, end; ids 0..n; tokens_out == #token events."""
    run = await start_orchestrator(mock_config())
    resp = await run.submit(prompt="one two three", max_tokens=12, seed=7)
    assert resp.status == 202
    body = await resp.json()
    assert set(body) == {
        "task_id",
        "queue_position",
        "predicted_start_ms",
        "backoff_ms",
        "predicted_finish_ms",  # ORCH-1957
    }
    assert resp.headers["X-Correlation-Id"]
    events = await run.events(body["task_id"])
    assert [e[0] for e in events] == list(range(len(events)))
    names = [e[1] for e in events]
    assert names[0] == "started" and names[-1] == "end"
    tokens = [e[2] for e in events if e[1] == "token"]
    assert [t["i"] for t in tokens] == list(range(len(tokens)))
    assert len(tokens) == 12
    assert events[-1][2]["tokens_out"] == 12 and events[-1][2]["reason"] == "length"
    started = events[0][2]
    assert started["engine"] == "mock" and started["model_digest"] and started["engine_version"]


async def test_same_seed_same_stream(start_orchestrator, mock_config):
    """ORCH-1003: a fixed seed reproduces the stream."""
    run = await start_orchestrator(mock_config())
    texts = []
    for _ in range(2):
        resp = await run.submit(prompt="p", max_tokens=8, seed=3)
        tid = (await resp.json())["task_id"]
        texts.append("".join(e[2]["t"] for e in await run.events(tid) if e[1] == "token"))
    assert texts[0] == texts[1] and texts[0]


async def test_late_client_gets_full_replay_and_resume_is_exact(start_orchestrator, mock_config):
    """ORCH-1201: a late reader gets everything; Last-Event-ID resumes with no loss or repeat."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 5}))
    tid = (await (await run.submit(max_tokens=20)).json())["task_id"]
    first = await run.events(tid, limit=6)
    rest = await run.events(tid, last_event_id=first[-1][0])
    full = await run.events(tid)
    assert first + rest == full
    assert [e[0] for e in full] == list(range(len(full)))


async def test_invalid_body_names_the_field(start_orchestrator, mock_config):
    """ORCH-1001: unknown or mistyped fields give 400 INVALID_PARAMS naming the field."""
    run = await start_orchestrator(mock_config())
    resp = await run.submit(max_tokens="lots")
    assert resp.status == 400
    err = await resp.json()
    assert err["code"] == "INVALID_PARAMS" and "max_tokens" in err["message"]
    resp = await run.submit(bogus=1)
    assert resp.status == 400 and "bogus" in (await resp.json())["message"]
    assert resp.headers["X-Correlation-Id"]
    text = await run.metrics_text()
    assert re.search(r'tasks_rejected_total\{[^}]*reason="INVALID_PARAMS"[^}]*\} 2\.0', text)
    assert "tasks_enqueued_total{" not in text


async def test_ctx_and_budget_checks(start_orchestrator, mock_config):
    """ORCH-1002: ctx above the model limit, prompt + max_tokens above ctx → 400, nothing queued."""
    run = await start_orchestrator(mock_config(adapter_options={"ctx": 64}))
    resp = await run.submit(ctx=128)
    assert resp.status == 400 and "ctx" in (await resp.json())["message"]
    resp = await run.submit(prompt="a b c d", max_tokens=62)
    assert resp.status == 400 and "exceeds ctx" in (await resp.json())["message"]
    assert len(run.orch.tasks) == 0


async def test_correlation_id_echoed_not_on_204(start_orchestrator, mock_config):
    """ORCH-2003."""
    run = await start_orchestrator(mock_config())
    async with run.http.get(run.url + "/v1/capabilities", headers={"X-Correlation-Id": "abc"}) as r:
        assert r.headers["X-Correlation-Id"] == "abc"
        caps = await r.json()
        assert caps["api_version"] == API_VERSION and "mock" in caps["engines"]
    tid = (await (await run.submit(max_tokens=2)).json())["task_id"]
    async with run.http.post(f"{run.url}/v1/tasks/{tid}/cancel") as r:
        assert r.status == 204 and "X-Correlation-Id" not in r.headers
    async with run.http.get(run.url + "/v1/tasks/" + str(uuid.uuid4())) as r:
        assert r.status == 404 and (await r.json())["code"] == "NOT_FOUND"
        assert r.headers["X-Correlation-Id"]


async def test_cancel_running_no_token_after_204(start_orchestrator, mock_config):
    """ORCH-2004: after the 204 no token event; the slot is free again."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 10}))
    tid = (await (await run.submit(max_tokens=500)).json())["task_id"]
    seen = await run.events(tid, limit=8)
    async with run.http.post(f"{run.url}/v1/tasks/{tid}/cancel") as r:
        assert r.status == 204
    at_cancel = run.orch.get(tid).event_count
    events = await run.events(tid)
    assert events[: len(seen)] == seen
    assert len(events) == at_cancel
    assert events[-1][1] == "end" and events[-1][2]["reason"] == "canceled"
    await asyncio.wait_for(run.orch.get(tid).runner, 2)
    replica = next(iter(run.orch.pools["mock"].replicas.values()))
    assert replica.busy == 0 and replica.adapter.busy_slots == 0


async def test_cancel_queued_never_reaches_engine(start_orchestrator, mock_config):
    """ORCH-2004: a queued task ends with its terminal event and is never dispatched."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 20}))
    first = (await (await run.submit(max_tokens=200)).json())["task_id"]
    queued = (await (await run.submit(max_tokens=5)).json())["task_id"]
    assert run.orch.get(queued).state == "queued"
    async with run.http.post(f"{run.url}/v1/tasks/{queued}/cancel") as r:
        assert r.status == 204
    events = await run.events(queued)
    assert [e[1] for e in events] == ["end"] and events[0][2]["reason"] == "canceled"
    assert run.orch.get(queued).replica_id is None
    async with run.http.post(f"{run.url}/v1/tasks/{first}/cancel") as r:
        assert r.status == 204


async def test_queue_full_429_with_backoff(start_orchestrator, mock_config):
    """ORCH-1102/1105/1107: capacity 2, one slot: the 4th concurrent submit gets 429."""
    run = await start_orchestrator(
        mock_config(admission={"queue_capacity": 2}, adapter_options={"token_delay_ms": 20})
    )
    ok = []
    for _ in range(3):
        resp = await run.submit(max_tokens=50)
        assert resp.status == 202
        ok.append((await resp.json())["task_id"])
    resp = await run.submit(max_tokens=50)
    assert resp.status == 429
    err = await resp.json()
    assert err["code"] == "ADMISSION_REJECT" and err["policy_label"] == "reject"
    assert err["retriable"] is True and err["retry_after_ms"] >= 100
    assert int(resp.headers["Retry-After"]) >= 1
    assert int(resp.headers["X-Backoff-Ms"]) == err["retry_after_ms"]
    assert resp.headers["X-Queue-Position"] == "2"  # behind the two queued tasks
    assert resp.headers["X-Queue-ETA-Ms"] == resp.headers["X-Backoff-Ms"]
    for tid in ok:
        events = await run.events(tid)
        assert [e[1] for e in events].count("end") + [e[1] for e in events].count("error") == 1
    text = await run.metrics_text()
    assert re.search(r'admission_backpressure_events_total\{[^}]*policy="reject"[^}]*\} 1\.0', text)


async def test_drop_lru_displaces_oldest_with_terminal_error(start_orchestrator, mock_config):
    """ORCH-1103: the displaced task gets QUEUE_FULL_DROP_LRU, never disappears;
    ORCH-1108: it is counted in tasks_rejected_total with that reason."""
    run = await start_orchestrator(
        mock_config(
            admission={"queue_capacity": 1, "full_policy": "drop-lru"},
            adapter_options={"token_delay_ms": 20},
        )
    )
    running = (await (await run.submit(max_tokens=100)).json())["task_id"]
    old = (await (await run.submit(max_tokens=5)).json())["task_id"]
    new = await run.submit(max_tokens=5)
    assert new.status == 202
    events = await run.events(old)
    # A `queued` event (ORCH-1961) may precede it on a slow machine: the queue's
    # forecast can change while `old` waits. Nothing else may: it never ran.
    assert [e[1] for e in events if e[1] != "queued"] == ["error"]
    assert events[-1][2]["code"] == "QUEUE_FULL_DROP_LRU"
    assert re.search(
        r'tasks_rejected_total\{[^}]*policy="drop-lru"[^}]*'
        r'reason="QUEUE_FULL_DROP_LRU"[^}]*\} 1\.0',
        await run.metrics_text(),
    )
    async with run.http.post(f"{run.url}/v1/tasks/{running}/cancel"):
        pass


async def test_sessions_get_and_delete(start_orchestrator, mock_config):
    """ORCH-1401: a session counts turns and tokens; DELETE forgets it."""
    run = await start_orchestrator(mock_config())
    sid = str(uuid.uuid4())
    tid = (await (await run.submit(session_id=sid, max_tokens=4)).json())["task_id"]
    await run.events(tid)
    async with run.http.get(f"{run.url}/v1/sessions/{sid}") as r:
        info = await r.json()
    assert info["turns"] == 1 and info["tokens_out"] == 4 and info["ttl_ms_remaining"] > 0
    async with run.http.delete(f"{run.url}/v1/sessions/{sid}") as r:
        assert r.status == 204
    async with run.http.get(f"{run.url}/v1/sessions/{sid}") as r:
        assert r.status == 404


async def test_engine_failure_is_a_terminal_error(start_orchestrator, mock_config):
    """A worker reset mid-stream ends the task with WORKER_RESET (one terminal event)."""
    run = await start_orchestrator(mock_config(adapter_options={"fail": "reset_after:3"}))
    tid = (await (await run.submit(max_tokens=10)).json())["task_id"]
    events = await run.events(tid)
    assert [e[1] for e in events].count("token") == 3
    assert events[-1][1] == "error" and events[-1][2]["code"] == "WORKER_RESET"


async def test_metrics_match_what_happened(start_orchestrator, mock_config):
    """ORCH-1501: counters and labels reflect the run."""
    run = await start_orchestrator(mock_config())
    for _ in range(2):
        tid = (await (await run.submit(max_tokens=5)).json())["task_id"]
        await run.events(tid)
    text = await run.metrics_text()
    assert re.search(
        r'tasks_enqueued_total\{[^}]*engine="mock"[^}]*pool_id="mock"[^}]*\} 2\.0', text
    )
    assert re.search(r'tasks_started_total\{[^}]*engine_version="mock-1"[^}]*\} 2\.0', text)
    assert re.search(r'tokens_out_total\{[^}]*replica_id="mock-e0"[^}]*\} 10\.0', text)
    assert re.search(r'queue_depth\{[^}]*priority="interactive"[^}]*\} 0\.0', text)


async def test_unreachable_engine_requeues_then_fails_once(start_orchestrator, mock_config):
    """ORCH-1117: a task that never reached its engine is retried at most twice, then ends
    with one WORKER_RESET; its stream shows one `started` and one terminal event."""
    cfg = mock_config(adapter_options={"fail": "error_at_start"})
    # the startup self-test (ORCH-7050) would keep this broken engine out of the pool
    cfg = msgspec.structs.replace(
        cfg, observability=msgspec.structs.replace(cfg.observability, self_test=False)
    )
    run = await start_orchestrator(cfg)
    tid = (await (await run.submit(max_tokens=5)).json())["task_id"]
    events = await run.events(tid)
    names = [e[1] for e in events]
    assert names.count("started") == 1 and names[-1] == "error", events
    assert events[-1][2]["code"] == "WORKER_RESET"
    assert run.orch.get(tid).attempts == 2


async def test_tokenizer_skipped_only_when_bytes_bound_the_count(start_orchestrator, mock_config):
    """ORCH-1118: a short sessionless prompt is not sent to the tokenizer, and its
    tokens_in is the engine's own count; a prompt whose bytes could overflow ctx,
    and any session task, are counted before admission (ORCH-1002 still holds)."""
    run = await start_orchestrator(mock_config(adapter_options={"ctx": 256}))
    counted: list[str] = []
    for replica in run.orch.pools["mock"].replicas.values():
        real = replica.adapter.tokenize

        async def spy(text: str, real=real) -> list[int]:
            counted.append(text)
            return await real(text)

        replica.adapter.tokenize = spy  # type: ignore[method-assign]

    tid = (await (await run.submit(prompt="one two three", max_tokens=8)).json())["task_id"]
    events = await run.events(tid)
    assert counted == []
    assert events[-1][1] == "end" and events[-1][2]["tokens_in"] == 4  # BOS + 3 words
    assert re.search(r"tokens_in_total\{[^}]*\} 4\.0", await run.metrics_text())

    long_prompt = "w " * 120  # 240 bytes + 16 + 8 > 256: could overflow, so it is counted
    tid = (await (await run.submit(prompt=long_prompt, max_tokens=8)).json())["task_id"]
    assert counted == [long_prompt]
    assert (await run.events(tid))[-1][2]["tokens_in"] == 121
    resp = await run.submit(prompt="w " * 250, max_tokens=8)  # 251 tokens + 8 > 256
    assert resp.status == 400 and "exceeds ctx" in (await resp.json())["message"]

    counted.clear()
    sid = str(uuid.uuid4())
    tid = (await (await run.submit(prompt="hi", session_id=sid, max_tokens=4)).json())["task_id"]
    assert counted == ["hi"]
    assert (await run.events(tid))[-1][2]["tokens_in"] == 2


async def test_grammar_needs_an_engine_that_declares_it(start_orchestrator, mock_config):
    """ORCH-1010: the mock engine does not declare `grammar`: 400 naming the field."""
    run = await start_orchestrator(mock_config())
    resp = await run.submit(prompt="hi", max_tokens=4, grammar='root ::= "a"')
    body = await resp.json()
    assert resp.status == 400 and body["code"] == "INVALID_PARAMS", body
    assert "$.grammar" in body["message"]
