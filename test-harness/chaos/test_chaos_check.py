"""The chaos checker's self-tests (issue #21): every invariant is shown able to fail on a
planted bug in a synthetic history, and the figures are computed as the report says.

ORCH-6103..6105, ORCH-6111, ORCH-6115, ORCH-6242 (`.specs/60-testing-and-ci.md` §7).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # --import-mode=importlib: load the harness by its folder
    sys.path.insert(0, str(HERE))

import chaos_check  # noqa: E402
import chaos_figures  # noqa: E402
import chaos_history  # noqa: E402
from chaos_synthetic import clean_history as _history  # noqa: E402
from chaos_synthetic import task_record as _task  # noqa: E402

# --------------------------------------------------------------------------- synthetic histories


def _checks(h: dict[str, Any]) -> set[str]:
    return {v.check for v in chaos_check.check(h)}


def test_a_clean_history_has_no_violation() -> None:
    """ORCH-6105: the planted-bug tests below start from this clean history."""
    assert chaos_check.check(_history()) == []


def test_planted_second_terminal_event_is_caught() -> None:
    h = _history()
    ev = h["tasks"][0]["events"]
    ev.append([ev[-1][0] + 0.1, len(ev), "error", {"code": "WORKER_RESET"}])
    h["tasks"][0]["replay"] = [e[1:] for e in ev]
    assert {"one_terminal", "terminal_last"} <= _checks(h)


def test_planted_token_after_cancel_is_caught() -> None:
    h = _history()
    r = h["tasks"][0]
    end = r["events"][-1]
    end[3] = {"tokens_out": 3, "reason": "canceled"}
    r["cancel"] = {"t_send": end[0] - 0.05, "t_recv": end[0] + 0.001, "status": 204}
    r["events"].append([end[0] + 0.01, end[1] + 1, "token", {"t": "late", "i": 3}])
    h["daemon_task_ends"][0]["state"] = "canceled"
    assert "no_token_after_cancel" in _checks(h)


def test_planted_leaked_slot_is_caught() -> None:
    h = _history()
    h["slots_after_run"]["1"] = [
        {"id": 0, "is_processing": False},
        {"id": 1, "is_processing": True},
    ]
    assert _checks(h) == {"slot_leak"}


def test_planted_lost_task_is_caught_and_counted() -> None:
    h = _history()
    r = h["tasks"][1]
    r["events"] = r["events"][:-1]  # the stream never delivered a terminal event
    r["replay"] = r["replay"][:-1]
    violations = chaos_check.check(h)
    assert "lost" in {v.check for v in violations}
    assert chaos_figures.figures(h, violations)["lost"] == 1


def test_planted_retry_after_cancel_is_caught() -> None:
    h = _history()
    r = h["tasks"][0]
    r["events"][-1][3] = {"tokens_out": 3, "reason": "canceled"}
    r["replay"] = [e[1:] for e in r["events"]]
    r["cancel"] = {"t_send": 100.3, "t_recv": 100.31, "status": 204}
    h["daemon_task_ends"][0]["state"] = "canceled"
    assert chaos_check.check(h) == []
    # a send orchestratord had begun and aborted at once (no byte back) did no work
    aborted = {"arrival": 0, "engine": 1, "opened": 100.35, "closed": 100.36, "final": False}
    h["exchanges"].append(aborted)
    assert chaos_check.check(h) == []
    h["exchanges"].append({"arrival": 0, "engine": 1, "opened": 100.4, "final": False})
    assert _checks(h) == {"no_retry_after_cancel"}


def _openai(rec: dict[str, Any]) -> dict[str, Any]:
    """The same task as an OpenAI-API client saw it: one chunk per token, a finish
    chunk, ``[DONE]``; the checker reads its events from the replayed log."""
    ev = rec.pop("events")
    toks = [e for e in ev if e[2] == "token"]
    t_end = ev[-1][0]
    rec["api"] = "openai"
    rec["oa"] = {
        "chunks": [[e[0], e[3]["t"], None] for e in toks] + [[t_end, "", "stop"]],
        "done": t_end + 0.001,
        "error": None,
        "closed": None,
    }
    return rec


def test_openai_clients_are_checked_against_the_task_log() -> None:
    """ORCH-6108: each rule of the OpenAI-API check fails on its planted bug."""
    h = _history()
    _openai(h["tasks"][0])
    assert chaos_check.check(h) == []
    assert chaos_history.outcome(h["tasks"][0]) == "completed"

    bad = copy.deepcopy(h)  # a chunk the task never produced
    bad["tasks"][0]["oa"]["chunks"][1][1] = "y"
    assert _checks(bad) == {"openai_text"}

    bad = copy.deepcopy(h)  # the engine failed, the client still got a clean [DONE]
    bad["tasks"][0]["replay"][-1] = [4, "error", {"code": "WORKER_RESET"}]
    assert "clean_end_from_failed_engine" in _checks(bad)

    bad = copy.deepcopy(h)  # finish_reason that does not match the end's reason
    bad["tasks"][0]["replay"][-1][2]["reason"] = "length"
    assert _checks(bad) == {"openai_finish"}

    bad = copy.deepcopy(h)  # neither [DONE] nor an error nor a close: lost
    bad["tasks"][0]["oa"]["done"] = None
    assert "lost" in _checks(bad)

    closed = copy.deepcopy(h)  # a close mid-stream; the task ends canceled
    r = closed["tasks"][0]
    r["oa"].update(chunks=r["oa"]["chunks"][:1], done=None, closed=100.25)
    r["replay"][-1][2]["reason"] = "canceled"
    assert chaos_check.check(closed) == []
    assert chaos_history.cancel_of(r) is not None
    closed["exchanges"].append({"arrival": 0, "engine": 1, "opened": 100.9, "final": False})
    assert _checks(closed) == {"no_retry_after_cancel"}


def test_an_openai_task_whose_log_was_evicted_counts_as_the_client_saw_it() -> None:
    """The long run after ORCH-6108 counted 249 OpenAI-API tasks as lost: their logs
    were evicted (event_log_retention_s) before the replay, so no terminal was found.
    Their outcome is then the client's ([DONE], error chunk, close); a stream that
    ended with none of these is still lost."""
    h = _history()
    r = _openai(h["tasks"][0])
    r["replay"], r["replay_status"] = [], 404
    assert chaos_history.outcome(r) == "completed"
    assert chaos_check.check(h) == [] and chaos_figures.figures(h, [])["lost"] == 0
    r["oa"]["done"], r["oa"]["closed"] = None, 100.3
    assert chaos_history.outcome(r) == "canceled"
    r["oa"]["closed"], r["oa"]["error"] = None, [100.4, {"code": "WORKER_RESET"}]
    assert chaos_history.outcome(r) == "failed:WORKER_RESET"
    r["oa"]["error"] = None
    assert chaos_history.outcome(r) == "lost"
    assert _checks(h) == {"lost"}


def test_a_replay_differing_is_caught_unless_the_log_was_evicted() -> None:
    h = _history()
    h["tasks"][0]["replay"] = []
    h["tasks"][0]["replay_status"] = 200
    assert _checks(h) == {"replay"}
    h["tasks"][0]["replay_status"] = 404  # older than event_log_retention_s: by design
    assert chaos_check.check(h) == []


def test_planted_clean_end_from_a_cut_engine_stream_is_caught() -> None:
    h = _history()
    h["exchanges"][2]["final"] = False
    h["exchanges"][2]["cut"] = "upstream-eof"
    assert _checks(h) == {"clean_end_from_failed_engine"}


def test_planted_gap_or_repeat_on_resume_is_caught() -> None:
    h = _history()
    ev = h["tasks"][2]["events"]
    ev.insert(3, copy.deepcopy(ev[2]))  # a resume that replays one token again
    assert {"event_ids", "token_indices"} <= _checks(h)
    h = _history()
    del h["tasks"][2]["events"][2]  # a resume that skipped one event
    assert {"event_ids", "token_indices"} <= _checks(h)


def test_planted_quota_breach_and_daemon_log_mismatch_are_caught() -> None:
    h = _history()
    extra = _task(3, tenant="gamma", t=100.2)  # admitted while task 1 still ran
    h["tasks"].append(extra)
    h["exchanges"].append({"arrival": 3, "engine": 0, "opened": 100.3, "final": True})
    h["daemon_task_ends"].append({"job_id": "task-3", "state": "completed", "ts": 100.8})
    assert _checks(h) == {"quota"}
    h["daemon_task_ends"][-1]["state"] = "failed"
    assert _checks(h) == {"quota", "daemon_log"}


def test_figures_count_outcomes_and_retry_after_error() -> None:
    h = _history()
    r = h["tasks"][2]
    r["submits"] = [
        {"t_send": 99.0, "t_recv": 99.0, "status": 429, "retry_after": 2.0, "code": "QUEUE_FULL"},
        {"t_send": 101.0, "t_recv": 101.01, "status": 202, "retry_after": None},
    ]
    r["t_accepted"] = 101.01
    h["tasks"].append({"n": 9, "submits": [{"status": 429, "code": "QUEUE_FULL", "t_recv": 1}]})
    figs = chaos_figures.figures(h, [])
    assert figs["accepted"] == 3 and figs["completed"] == 3 and figs["lost"] == 0
    assert figs["rejected_by_code"] == {"QUEUE_FULL": 1}
    assert figs["retry_after_error_s"]["n"] == 1
    # the tenant was admitted again 1.01 s after the 429 (task 0), this client after 2.01 s
    assert figs["retry_after_error_s"]["p50"] == pytest.approx(0.99, abs=1e-6)
    assert figs["retry_after_client_error_s"]["p50"] == pytest.approx(0.01, abs=1e-6)


def test_retry_after_error_is_measured_on_the_forecast_in_ms() -> None:
    """ORCH-6268: a refusal told 200 ms (``X-Backoff-Ms``), hence ``Retry-After: 1``, and
    room again 0.25 s later: the forecast was 0.05 s off; the header's rounding up to a
    whole second reads 0.75 s, reported beside it, not gated."""
    h = _history()
    r = h["tasks"][2]
    r["submits"] = [
        {"t_send": 99.7, "t_recv": 99.76, "status": 429, "retry_after": 1.0, "backoff_ms": 200},
        {"t_send": 100.5, "t_recv": 100.51, "status": 202, "retry_after": None},
    ]
    r["t_accepted"] = 100.51
    figs = chaos_figures.figures(h, [])
    assert figs["retry_after_error_s"] == {"n": 1, "p50": 0.05, "p90": 0.05}
    assert figs["retry_after_header_error_s"] == {"n": 1, "p50": 0.75, "p90": 0.75}


def test_a_max_concurrent_refusal_is_measured_to_its_tenants_first_task_end() -> None:
    """ORCH-6269: gamma (``max_concurrent`` 1) is refused at 100.2 s while its task 1
    runs, told 300 ms; the daemon logs task 1's end at 100.55 s, when the cap admits
    again: the forecast was 0.05 s off. Gamma's next 202 comes at 101.51 s (a full queue
    meanwhile, another limit): 1.01 s, reported beside, not gated. A bucket's refusal,
    and a cap's without the daemon's end line, are still measured to the next 202."""
    h = _history()
    r = _task(5, tenant="gamma", t=101.5)
    refusal = {
        "t_send": 100.19,
        "t_recv": 100.2,
        "status": 429,
        "policy": "quota",
        "message": "tenant 'gamma' has 1 tasks in flight (max_concurrent=1)",
        "retry_after": 1.0,
        "backoff_ms": 300,
    }
    r["submits"] = [refusal, *r["submits"]]
    h["tasks"].append(r)
    figs = chaos_figures.figures(h, [])
    assert figs["retry_after_error_s"] == {"n": 1, "p50": 0.05, "p90": 0.05}
    assert figs["retry_after_next_admit_error_s"] == {"n": 1, "p50": 1.01, "p90": 1.01}
    refusal["backoff_ms"] = 100  # the pool's next place: 0.25 s short of the cap's reopening
    assert chaos_figures.figures(h, [])["retry_after_error_s"]["p50"] == 0.25
    refusal["message"] = "tenant 'gamma' exceeded its rate (1/s, burst 2)"  # a bucket
    assert chaos_figures.figures(h, [])["retry_after_error_s"]["p50"] == 1.21
    refusal["message"] = "tenant 'gamma' has 1 tasks in flight (max_concurrent=1)"
    h["daemon_task_ends"] = [d for d in h["daemon_task_ends"] if d["job_id"] != "task-1"]
    assert chaos_figures.figures(h, [])["retry_after_error_s"]["p50"] == 1.21


# --------------------------------------------------------------------------- store faults


def _store_history() -> dict[str, Any]:
    """A clean history of a store run: task 0 streamed across an orchestratord kill -9
    (its client reconnected with Last-Event-ID, the restarted instance continued it
    with ``metrics {resumed: true}``); task 9 was submitted during a store outage."""
    h = _history()
    h["daemon_account"], h["store"], h["orchestratord_restarts"] = False, True, 1
    h["quotas"] = {}
    r = h["tasks"][0]
    ev = r["events"]
    ev.insert(3, [100.25, 3, "metrics", {"resumed": True}])
    for k, e in enumerate(ev):
        e[1] = k
    ev[-1][3]["tokens_out"] = 3
    r["replay"] = [e[1:] for e in ev]
    r["connections"] = [
        {"t_open": 100.02, "last_event_id": None, "n": 3, "error": "cut"},
        {"t_open": 100.24, "last_event_id": 2, "n": 3, "error": None},
    ]
    h["exchanges"][0]["final"] = False  # the killed instance's engine request was cut
    h["exchanges"].append({"arrival": 0, "engine": 0, "opened": 100.24, "final": True})
    late = _task(9, 2, t=101.2)
    late["submits"] = [
        {"t_send": 101.05, "t_recv": 101.06, "status": 503, "retry_after": 1.0},
        {"t_send": 101.2, "t_recv": 101.21, "status": 202, "retry_after": None},
    ]
    h["tasks"].append(late)
    h["exchanges"].append({"arrival": 9, "engine": 0, "opened": 101.3, "final": True})
    h["faults"] = [
        {"n": 0, "kind": "store_kill9", "t_start": 101.02, "t_end": 101.1, "in_flight": [2]},
        {"n": 1, "kind": "orchestratord_kill9", "t_start": 100.2, "t_end": 100.23,
         "in_flight": [0], "ready_after_start_s": 0.7},
    ]  # fmt: skip
    # the daemon's account does not survive its kill -9: not checked with the store
    h["daemon_task_ends"] = h["daemon_task_ends"][1:]
    h["orch_metrics_tasks"] = ['tasks_enqueued_total{pool_id="chaos"} 1.0']
    return h


def test_a_clean_store_history_has_no_violation_and_its_figures() -> None:
    """ORCH-6111, ORCH-6112: the store rules start from this clean history."""
    h = _store_history()
    assert chaos_check.check(h) == []
    figs = chaos_figures.figures(h, [])
    assert figs["lost"] == 0
    sf = {f["kind"]: f for f in figs["store_faults"]}
    assert sf["store_kill9"]["answers"] == {"503": 1}
    assert sf["store_kill9"]["first_503_s"] == pytest.approx(0.04)
    assert sf["store_kill9"]["first_202_after_s"] == pytest.approx(0.11)
    assert sf["orchestratord_kill9"]["resumed"] == 1
    assert sf["orchestratord_kill9"]["in_flight_outcomes"] == {"completed": 1}
    # without the store, the same daemon account is a violation (the rule is only off)
    h["daemon_account"] = True
    assert _checks(h) == {"daemon_log", "daemon_metrics"}


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"status": 500, "code": "INTERNAL"}, "a 500"),
        ({"status": 503, "retry_after": None}, "a 503 without Retry-After"),
        ({"status": 0, "code": "TimeoutError()"}, "no answer"),
        ({"status": 202, "t_recv": 101.05 + chaos_history.STORE_ANSWER_BOUND_S + 1}, "a hang"),
    ],
)
def test_planted_bad_answer_during_a_store_outage_is_caught(
    answer: dict[str, Any], why: str
) -> None:
    """ORCH-6111: a submit during a store outage answers 503 + Retry-After (or 202/4xx)
    in bounded time."""
    h = _store_history()
    h["tasks"][-1]["submits"][0] |= answer
    assert _checks(h) == {"outage_answer"}, why


def test_planted_task_lost_across_an_orchestratord_restart_is_caught() -> None:
    """ORCH-6111: a 202-accepted task must end once across the restart: a stream that
    never came back (no terminal after the reconnect) is lost, and a second terminal
    (the killed instance's local end plus the takeover's) is caught."""
    h = _store_history()
    r = h["tasks"][0]
    r["events"] = r["events"][:3]  # the reconnect after the kill got nothing more
    r["replay"] = [e[1:] for e in r["events"]]
    violations = chaos_check.check(h)
    assert {v.check for v in violations} == {"lost"}
    assert chaos_figures.figures(h, violations)["lost"] == 1
    h = _store_history()
    ev = h["tasks"][0]["events"]
    ev.insert(3, [100.21, 3, "error", {"code": "WORKER_RESET"}])
    for k, e in enumerate(ev):
        e[1] = k
    h["tasks"][0]["replay"] = [e[1:] for e in ev]
    assert {"one_terminal", "terminal_last"} <= _checks(h)


def test_planted_token_repeat_after_a_takeover_is_caught() -> None:
    """ORCH-6111: the continued run's token indices go on from the next one: a
    takeover that streams the last logged token again is caught."""
    h = _store_history()
    ev = h["tasks"][0]["events"]
    at = next(k for k, e in enumerate(ev) if e[2] == "metrics")
    ev.insert(at + 1, [100.26, 0, "token", {"t": "x", "i": 1}])
    for k, e in enumerate(ev):
        e[1] = k
    ev[-1][3]["tokens_out"] = 4
    h["tasks"][0]["replay"] = [e[1:] for e in ev]
    assert _checks(h) == {"token_indices"}


def _pool_history() -> dict[str, Any]:
    """A clean history of a pool-managerd run: no proxies (no exchanges), a
    pool-managerd kill -9 whose running task ended WORKER_RESET, a restart storm that
    opened both breakers, left the pool unready (a submit answered 503) and was reset."""
    h = _history()
    h["exchanges"] = None
    h["quotas"] = {}
    r = h["tasks"][1]
    r["events"][-1] = [r["events"][-1][0], 4, "error", {"code": "WORKER_RESET"}]
    r["replay"] = [e[1:] for e in r["events"]]
    h["daemon_task_ends"][1]["state"] = "failed"
    late = _task(9, 2, t=101.5)
    late["submits"] = [
        {"t_send": 101.05, "t_recv": 101.06, "status": 503, "retry_after": 1.0},
        {"t_send": 101.5, "t_recv": 101.51, "status": 202, "retry_after": None},
    ]
    h["tasks"].append(late)
    h["daemon_task_ends"].append({"job_id": "task-9", "state": "completed", "ts": 102.0})
    h["faults"] = [
        {"n": 0, "kind": "pool_managerd_kill9", "t_start": 100.3, "t_end": 100.9,
         "in_flight": [1], "engines_left_running": [], "ready_after_start_s": 2.5},
        {"n": 1, "kind": "restart_storm", "t_start": 101.02, "t_end": 101.3, "in_flight": [],
         "t_open": 101.1, "kills": 4, "breakers_open": ["pm/chaos-r0", "pm/chaos-r1"],
         "open_after_s": 0.08, "unready_seen": True, "unready_after_open_s": 0.1,
         "reset_status": 200, "ready_after_reset_s": 1.2},
    ]  # fmt: skip
    return h


def test_a_clean_pool_managerd_history_has_no_violation_and_its_figures() -> None:
    """ORCH-6114, ORCH-6115: without proxies the clean-end rule has nothing to hold a
    clean end against and is not run; the pool rules start from this clean history."""
    h = _pool_history()
    assert chaos_check.check(h) == []
    figs = chaos_figures.figures(h, [])
    pf = {f["kind"]: f for f in figs["pool_faults"]}
    assert pf["restart_storm"]["answers"] == {"503": 1}
    assert pf["restart_storm"]["ready_after_reset_s"] == 1.2
    assert pf["pool_managerd_kill9"]["in_flight_outcomes"] == {"failed:WORKER_RESET": 1}
    h["exchanges"] = []  # with proxies, a clean end with no engine request is caught
    assert _checks(h) == {"clean_end_from_failed_engine"}


@pytest.mark.parametrize(
    ("fault", "change", "check"),
    [
        (1, {"breakers_open": []}, "restart_storm"),  # the breaker never opened
        (1, {"unready_seen": False}, "restart_storm"),  # the pool still said Ready
        (1, {"ready_after_reset_s": None}, "restart_storm"),  # no recovery after reset
        (1, {"reset_status": 500}, "restart_storm"),
        (0, {"engines_left_running": [4242]}, "pool_managerd_kill9"),  # orphaned engine
        (0, {"ready_after_start_s": None}, "pool_managerd_kill9"),  # never came back
    ],
)
def test_planted_pool_fault_outcomes_are_caught(
    fault: int, change: dict[str, Any], check: str
) -> None:
    """ORCH-6115: each rule on a storm or a pool-managerd kill fails on its planted bug."""
    h = _pool_history()
    h["faults"][fault] |= change
    assert _checks(h) == {check}


def test_planted_untyped_failure_and_bad_answer_while_unready_are_caught() -> None:
    """ORCH-6115: a task ends typed (an error with its code); a submit while every
    breaker is open is answered 503 with Retry-After, not 500."""
    h = _pool_history()
    h["tasks"][1]["events"][-1][3] = {"message": "boom"}
    h["tasks"][1]["replay"] = [e[1:] for e in h["tasks"][1]["events"]]
    assert _checks(h) == {"typed_error"}
    h = _pool_history()
    h["tasks"][-1]["submits"][0] |= {"status": 500, "retry_after": None}
    assert _checks(h) == {"outage_answer"}


def test_planted_session_turn_consumed_by_a_rejection_is_caught() -> None:
    """The bug this harness found (#21): 429'd session turns counted as turns."""
    h = _history()
    h["max_turns"] = 2
    for r in h["tasks"][:2]:
        r["session"], r["tenant"] = 0, "alpha"
    late = _task(5, t=102.0)
    late |= {"session": 0, "task_id": None, "t_accepted": None, "events": [], "replay": None}
    late["submits"] = [
        {"t_send": 102.0, "t_recv": 102.01, "status": 400, "message": "reached max_turns=2"}
    ]
    h["tasks"].append(late)
    h["quotas"] = {}
    assert chaos_check.check(h) == []  # two admitted turns: the refusal is right
    h["tasks"][1]["session"] = None
    assert _checks(h) == {"session_turns"}


def test_planted_unfair_dispatch_order_is_caught() -> None:
    """Alpha (weight 3) and beta (weight 1) both keep a deep backlog: serving only
    beta first is far from a 3:1 share; interleaving 3:1 is fair."""

    def run(order: list[str]) -> dict[str, Any]:
        h = _history()
        h["tasks"], h["exchanges"], h["quotas"] = [], [], {}
        h.pop("daemon_task_ends")
        for k, tenant in enumerate(order):
            r = _task(k, 1, tenant=tenant, t=10.0)  # all accepted at once
            r["events"][0][0] = 20.0 + k  # started one after the other
            r["events"][0][3]["queue_wait_ms"] = round((20.0 + k - r["t_accepted"]) * 1000)
            for e in r["events"][1:]:
                e[0] = 20.5 + k
            h["tasks"].append(r)
            h["exchanges"].append({"arrival": k, "engine": 0, "opened": 20.0 + k, "final": True})
        return h

    fair = run((["alpha"] * 3 + ["beta"]) * 10)
    assert chaos_figures.fairness(fair)["deviation"] < 0.1
    assert chaos_check.check(fair) == []
    unfair = run(["beta"] * 24 + ["alpha"] * 24 + ["beta"])
    assert _checks(unfair) == {"fairness"}


def test_fairness_orders_tasks_by_dispatch_not_by_the_started_events_arrival() -> None:
    """ORCH-6263. The daemon sends ``started`` when the engine first answers, after the prompt's
    prefill. A backlog served 3:1, then one task at a time, each dispatched at once:
    beta's long prompt reaches its client's ``started`` 3 s after dispatch, so by
    receive times beta looks backlogged when alpha's next task starts, and alpha
    looks served out of turn 12 times. The figure takes acceptance + ``queue_wait_ms``
    (the daemon's acceptance to dispatch): fair; without it, the receive order is
    flagged (the CI failure of 0.154 had this shape)."""
    h = _history()
    h["tasks"], h["exchanges"], h["quotas"] = [], [], {}
    h.pop("daemon_task_ends")
    rows = [
        (tenant, 10.0, 20.0 + k, 0.3) for k, tenant in enumerate((["alpha"] * 3 + ["beta"]) * 6)
    ]
    for j in range(12):
        t = 50.0 + 4 * j
        rows += [("beta", t, t, 3.0), ("alpha", t + 1, t + 1, 0.05)]
    for k, (tenant, accepted, dispatched, prefill) in enumerate(rows):
        r = _task(k, 1, tenant=tenant, t=accepted - 0.01)
        r["events"][0][0] = dispatched + prefill
        r["events"][0][3]["queue_wait_ms"] = round((dispatched - r["t_accepted"]) * 1000)
        for e in r["events"][1:]:
            e[0] = dispatched + prefill + 0.5
        h["tasks"].append(r)
        h["exchanges"].append({"arrival": k, "engine": 0, "opened": dispatched, "final": True})
    fair = chaos_figures.fairness(h)
    assert fair["samples"] >= 20 and fair["deviation"] < 0.1, fair
    assert chaos_check.check(h) == []
    for r in h["tasks"]:  # without the daemon's figure: the receive order
        del r["events"][0][3]["queue_wait_ms"]
    assert chaos_figures.fairness(h)["deviation"] > 0.15
    assert _checks(h) == {"fairness"}


def test_fairness_counts_a_dispatch_that_ended_before_its_engine_answered() -> None:
    """ORCH-6263. Beta and gamma (weight 1 each) served in turn; each gamma task is
    canceled during its prompt's prefill, so its client never sees ``started``. The
    daemon's task-end line names its replica and its queue time: it was dispatched in
    its turn. Without that line gamma looks backlogged the whole time, beta served
    out of turn."""
    h = _history()
    h["tasks"], h["exchanges"], h["quotas"], h["daemon_task_ends"] = [], [], {}, []
    for k in range(40):
        tenant = ("beta", "gamma")[k % 2]
        r = _task(k, 1, tenant=tenant, t=10.0)
        dispatched = 20.0 + k
        line = {"job_id": r["task_id"], "ts": dispatched + 0.5, "tenant": tenant}
        line |= {
            "replica_id": "chaos-e0",
            "queue_time_ms": round((dispatched - r["t_accepted"]) * 1000),
        }
        if tenant == "gamma":
            r["events"], r["replay"] = [], []
            line["state"] = "canceled"
        else:
            r["events"][0][0] = dispatched + 0.05
            r["events"][0][3]["queue_wait_ms"] = line["queue_time_ms"]
            line["state"] = "completed"
        h["tasks"].append(r)
        h["daemon_task_ends"].append(line)
    fair = chaos_figures.fairness(h)
    assert fair["samples"] >= 20 and fair["deviation"] < 0.05, fair
    for line in h["daemon_task_ends"]:
        line["replica_id"] = None  # as if never placed: canceled while queued
    assert chaos_figures.fairness(h)["deviation"] > 0.15


def test_planted_metrics_disagreement_is_caught() -> None:
    h = _history()
    h["orch_metrics_tasks"] = [
        'tasks_enqueued_total{pool_id="chaos",priority="batch"} 2.0',
        'tasks_enqueued_total{pool_id="chaos",priority="interactive"} 1.0',
        'tasks_canceled_total{pool_id="chaos",priority="batch"} 0.0',
    ]
    assert chaos_check.check(h) == []
    h["orch_metrics_tasks"][2] = 'tasks_canceled_total{pool_id="chaos",priority="batch"} 1.0'
    assert _checks(h) == {"daemon_metrics"}
