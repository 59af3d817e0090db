"""Self-tests of the cancel -> slot-free figure (ORCH-6106, ORCH-6242): measured on the
slot of the canceled request, from the /slots polls and from llama-server's own log with
its clock aligned conservatively (`.specs/60-testing-and-ci.md` §7). Split from
test_chaos_check.py."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # --import-mode=importlib: load the harness by its folder
    sys.path.insert(0, str(HERE))

import chaos_cancel  # noqa: E402
import chaos_figures  # noqa: E402
from chaos_synthetic import clean_history as _history  # noqa: E402


def test_cancel_to_slot_free_is_measured_on_the_slot_of_the_request() -> None:
    """The request's slot is the busy one with its prompt length; freed = not busy or
    running another task."""
    h = _history()
    r = h["tasks"][0]
    r["events"][-1][3] = {"tokens_out": 3, "reason": "canceled"}
    r["cancel"] = {"t_send": 100.30, "t_recv": 100.31, "status": 204}
    h["exchanges"][0] |= {"final": False, "prompt_tokens": 7, "closed": 100.32}

    def sample(t: float, *slots: tuple[int, bool, int | None, int | None]) -> dict[str, Any]:
        keys = ("id", "is_processing", "id_task", "prompt_len")
        return {"t": t, "slots": [dict(zip(keys, s, strict=True)) for s in slots]}

    h["slot_samples"] = {
        "0": [
            sample(100.0, (0, True, 5, 9), (1, True, 6, 7)),
            sample(100.36, (0, True, 5, 9), (1, True, 6, 7)),  # still decoding ours
            sample(100.42, (0, True, 5, 9), (1, True, 8, 12)),  # slot 1 took the next task
        ]
    }
    assert chaos_figures.cancel_slot_free(h) == [pytest.approx(0.12)]
    h["slot_samples"]["0"][0]["slots"][0]["prompt_len"] = 7  # ambiguous: not measured
    assert chaos_figures.cancel_slot_free(h) == []
    # A neighbour busy since before the request opened, with a prompt of about the same
    # length, is not the request's slot; ours shows its prefill so far (3 of 7 tokens).
    h["slot_samples"]["0"] = [
        sample(99.90, (0, False, None, None), (1, True, 4, 8)),
        sample(100.10, (0, True, 5, 3), (1, True, 4, 8)),
        sample(100.35, (0, False, None, None), (1, True, 4, 8)),
        sample(100.90, (0, False, None, None), (1, False, None, None)),
    ]
    assert chaos_figures.cancel_slot_free(h) == [pytest.approx(0.05)]


# llama-server's log (`--log-timestamps --log-prefix`): minutes.seconds.ms.us since
# its start. Task 5 is the canceled request's (slot 0), task 4 a neighbour's (slot 1).
_ENGINE_LOG = """\
0.00.000.991 I srv  llama_server: initializing ...
0.07.990.000 I slot get_availabl: id  1 | task -1 | selected slot by LRU, t_last = -1
0.08.000.000 I slot launch_slot_: id  1 | task 4 | processing task, is_child = 0
0.10.060.000 I slot launch_slot_: id  0 | task 5 | processing task, is_child = 0
0.10.325.000 W srv          stop: cancel task, id_task = 5
0.10.330.000 I slot      release: id  0 | task 5 | stop processing: n_tokens = 9, truncated = 0
0.10.500.000 I slot print_timing: id  1 | task 4 |       total time =     870.69 ms /    68 tokens
0.10.500.000 I slot      release: id  1 | task 4 | stop processing: n_tokens = 20, truncated = 0
1.02.003.004 I slot launch_slot_: id  1 | task 11 | processing task, is_child = 0
"""


def test_engine_log_slot_lines_are_parsed() -> None:
    """ORCH-6242: launch, cancel and release of each task, in seconds of the log's clock."""
    tasks = chaos_cancel.parse_engine_log(_ENGINE_LOG)
    assert tasks == {
        "4": {"slot": 1, "launch": pytest.approx(8.0), "release": pytest.approx(10.5)},
        "5": {
            "slot": 0,
            "launch": pytest.approx(10.06),
            "cancel": pytest.approx(10.325),
            "release": pytest.approx(10.33),
        },
        "11": {"slot": 1, "launch": pytest.approx(62.003004)},
    }


def _canceled_on_engine_log() -> dict[str, Any]:
    """Task 0 canceled at 100.30 while its request ran on engine 0 (spawned at 90.0, so
    its log's offset is at least 90.0); the /slots polls (sent at t_sent, answered at t)
    saw its slot free at 100.36, the poll figure 60 ms."""
    h = _history()
    r = h["tasks"][0]
    r["events"][-1][3] = {"tokens_out": 3, "reason": "canceled"}
    r["cancel"] = {"t_send": 100.30, "t_recv": 100.31, "status": 204}
    h["exchanges"][0] |= {"final": False, "prompt_tokens": 7, "closed": 100.32}

    def sample(t_sent: float, t: float, *slots: tuple[int, bool, int | None, int | None]):
        keys = ("id", "is_processing", "id_task", "prompt_len")
        rows = [dict(zip(keys, s, strict=True)) for s in slots]
        return {"t_sent": t_sent, "t": t, "slots": rows}

    h["slot_samples"] = {
        "0": [
            sample(99.00, 99.01, (0, False, None, None), (1, True, 4, 8)),
            sample(100.09, 100.10, (0, True, 5, 3), (1, True, 4, 8)),
            sample(100.345, 100.36, (0, False, None, None), (1, True, 4, 8)),
            sample(100.50, 100.515, (0, False, None, None), (1, False, None, None)),
        ]
    }
    tasks = chaos_cancel.parse_engine_log(_ENGINE_LOG)
    h["engine_logs"] = {"0": [{"incarnation": 1, "t_spawn": 90.0, "t_ready": 92.0, "tasks": tasks}]}
    return h


def test_cancel_slot_free_from_the_engine_log_takes_the_latest_consistent_offset() -> None:
    """ORCH-6242: the offset is the least upper bound the observations give. Here the
    neighbour's release (logged 10.50, seen free by the answer at 100.515) caps it at
    90.015, tighter than our own (10.33 -> 100.36: 90.03); the lower bounds (spawn 90.0,
    our request opened 100.05 - launch 10.06 = 89.99, polls sent before) stay below.
    So our slot was free at 10.33 + 90.015 = 100.345: 45 ms after the cancel, where
    the poll answer said 60 ms."""
    h = _canceled_on_engine_log()
    assert chaos_figures.cancel_slot_free(h) == [pytest.approx(0.06)]
    got = chaos_cancel.cancel_slot_free_engine(h)
    assert got.samples == [pytest.approx(0.045)]
    assert got.fallbacks == 0
    assert got.slack_s == [pytest.approx(0.015)]  # the offset lies in [90.0, 90.015]
    assert got.cancel_seen == [pytest.approx(0.04)]  # "cancel task" logged at 10.325
    figs = chaos_figures.figures(h, [])
    assert (figs["cancel_slot_free_ms"]["max"], figs["cancel_slot_free_ms"]["fallbacks"]) == (
        pytest.approx(45.0),
        0,
    )
    assert figs["cancel_slot_free_poll_ms"]["max"] == pytest.approx(60.0)
    # A poll sent after the neighbour's launch was logged (at 99.2, launch 8.0: offset
    # >= 91.2) that did not show it yet contradicts the upper bounds: no offset.
    idle = [{"id": k, "is_processing": False, "id_task": None, "prompt_len": None} for k in (0, 1)]
    h["slot_samples"]["0"][0] |= {"t_sent": 99.3, "t": 99.31}
    h["slot_samples"]["0"].insert(0, {"t_sent": 99.2, "t": 99.25, "slots": idle})
    got = chaos_cancel.cancel_slot_free_engine(h)
    assert (got.samples, got.fallbacks) == ([pytest.approx(0.06)], 1)


def test_cancel_slot_free_falls_back_to_the_poll_figure_without_the_release() -> None:
    """ORCH-6242: no release line for the task (or no log at all): the poll figure, counted."""
    h = _canceled_on_engine_log()
    del h["engine_logs"]["0"][0]["tasks"]["5"]["release"]
    got = chaos_cancel.cancel_slot_free_engine(h)
    assert (got.samples, got.fallbacks) == ([pytest.approx(0.06)], 1)
    del h["engine_logs"]
    got = chaos_cancel.cancel_slot_free_engine(h)
    assert (got.samples, got.fallbacks) == ([pytest.approx(0.06)], 1)
    # a spawn after what was seen is a lower bound above the upper ones: no offset
    h = _canceled_on_engine_log()
    h["engine_logs"]["0"][0]["t_spawn"] = 90.02
    got = chaos_cancel.cancel_slot_free_engine(h)
    assert (got.samples, got.fallbacks) == ([pytest.approx(0.06)], 1)
    # so is a request that reached the proxy after its launch was logged (100.08 - 10.06)
    h = _canceled_on_engine_log()
    h["exchanges"][0]["opened"] = 100.08
    got = chaos_cancel.cancel_slot_free_engine(h)
    assert (got.samples, got.fallbacks) == ([pytest.approx(0.06)], 1)


def test_each_engine_incarnation_has_its_own_log_clock() -> None:
    """ORCH-6242: a restarted engine counts task ids and its clock from zero again; the
    polls of its incarnation (sent after its spawn) say nothing of the previous one."""
    h = _canceled_on_engine_log()
    later = chaos_cancel.parse_engine_log(
        "0.00.020.000 I slot launch_slot_: id  0 | task 5 | processing task, is_child = 0\n"
        "0.00.100.000 I slot      release: id  0 | task 5 | stop processing: n_tokens = 3\n"
    )
    h["engine_logs"]["0"].append(
        {"incarnation": 2, "t_spawn": 100.60, "t_ready": 101.5, "tasks": later}
    )
    # an earlier incarnation (killed before this one was spawned) had a task 5 too
    h["engine_logs"]["0"].insert(
        0, {"incarnation": 0, "t_spawn": 50.0, "t_ready": 52.0, "tasks": later}
    )
    s = copy.deepcopy(h["slot_samples"]["0"][1])
    h["slot_samples"]["0"].append(s | {"t_sent": 101.0, "t": 101.01})
    idle = [{"id": k, "is_processing": False, "id_task": None, "prompt_len": None} for k in (0, 1)]
    h["slot_samples"]["0"].append({"t_sent": 101.6, "t": 101.61, "slots": idle})
    got = chaos_cancel.cancel_slot_free_engine(h)
    assert (got.samples, got.fallbacks) == ([pytest.approx(0.045)], 0)
    # incarnation 2: its task 5 first shown by the answer at 101.01 (launch 0.02: <=
    # 100.99), last by the poll sent at 101.0 (release 0.10: >= 100.90)
    assert got.slack_s == [pytest.approx(0.015)]
    assert chaos_cancel.clock_offsets(h)["0"] == [
        (pytest.approx(50.0), pytest.approx(52.0)),  # no poll of its own: spawn, ready
        (pytest.approx(90.0), pytest.approx(90.015)),
        (pytest.approx(100.9), pytest.approx(100.99)),
    ]


def test_an_engine_keeps_each_incarnations_log_for_the_history(tmp_path: Path) -> None:
    """ORCH-6242: what ``chaos_run`` records of each engine incarnation: its spawn and
    ready times and the slot lines of its own log; the engines log with timestamps."""
    from chaos_procs import LOG_FLAGS, Engine

    assert {"--log-timestamps", "--log-prefix"} <= set(LOG_FLAGS)
    e = Engine(0, tmp_path / "llama-server", tmp_path / "m.gguf", 2, tmp_path)
    for k, text in ((1, _ENGINE_LOG), (2, _ENGINE_LOG.splitlines()[3] + "\n")):
        (tmp_path / f"engine0-{k}.log").write_text(text)
        e.runs.append(
            {"incarnation": k, "log": str(tmp_path / f"engine0-{k}.log"), "t_spawn": 9.0 * k}
        )
    got = e.slot_logs()
    assert [(r["incarnation"], r["t_spawn"], sorted(r["tasks"])) for r in got] == [
        (1, 9.0, ["11", "4", "5"]),
        (2, 18.0, ["5"]),
    ]
    assert "log" not in got[0] and got[1]["tasks"]["5"] == {
        "slot": 0,
        "launch": pytest.approx(10.06),
    }


# --------------------------------------------------------------------------- the gate
# ORCH-6250..6254: the cancel figure in two parts (ours: cancel -> the proxy saw
# orchestratord end the engine connection; the engine's: -> the slot's release), each
# with its bound, and a ceiling on every cancel.


def _released_at(h: dict[str, Any], release_log_s: float, *, logged_cancel: bool) -> None:
    """Move the release of task 5 (the canceled request's) to ``release_log_s`` on the
    log's clock (offset 90.015, see above), the polls showing its slot busy until then."""
    tasks = h["engine_logs"]["0"][0]["tasks"]
    tasks["5"]["release"] = release_log_s
    if not logged_cancel:
        del tasks["5"]["cancel"]
    busy = copy.deepcopy(h["slot_samples"]["0"][1]["slots"])
    h["slot_samples"]["0"][2] |= {"slots": busy}
    h["slot_samples"]["0"][3]["slots"][0] = copy.deepcopy(busy[0])
    t_free = release_log_s + 90.03
    idle = [{"id": k, "is_processing": False, "id_task": None, "prompt_len": None} for k in (0, 1)]
    h["slot_samples"]["0"].append({"t_sent": t_free - 0.01, "t": t_free, "slots": idle})


def test_the_cancel_parts_split_at_our_close_of_the_engine_connection() -> None:
    """ORCH-6250: ours is 20 ms (cancel 100.30, the proxy saw our close at 100.32), the
    engine's 25 ms (release at 100.345), and both are within bounds: the engine step is
    10 ms here (the synthetic tokens' gap), so the engine's bound is 2 x 10 + 50 ms."""
    h = _canceled_on_engine_log()
    h["exchanges"][0]["cut"] = "client-eof"
    h["daemon_task_ends"][0] |= {"state": "canceled", "ts": 100.312}
    parts = chaos_cancel.cancel_parts(h)
    assert parts.ours == [pytest.approx(0.02)] and parts.ended == [pytest.approx(0.012)]
    assert parts.engine == [pytest.approx(0.025)] and parts.fallbacks == 0
    assert (parts.not_closed, parts.engine_missed_cancel) == (0, 0)
    figs = chaos_figures.figures(h, [])
    assert figs["token_gap_ms"]["p99"] == pytest.approx(10.0)
    assert chaos_cancel.cancel_gate(figs, min_n=1) == []
    assert chaos_cancel.cancel_gate(figs) == ["too few cancels measured: ours 1, engine 1"]
    # ORCH-6255: a stall of the runner's loop inside the span is counted, one outside not
    h["runner_stalls"] = [[100.25, 0.04], [100.33, 0.3]]
    assert chaos_cancel.cancel_parts(h).across_stall == 0
    h["runner_stalls"].append([100.31, 0.06])
    assert chaos_cancel.cancel_parts(h).across_stall == 1
    figs = chaos_figures.figures(h, [])
    assert figs["runner_stalls"] == {"n": 3, "max_ms": 300.0, "total_ms": 400.0}


def test_the_cancel_gate_fails_on_the_6_8_s_sample() -> None:
    """ORCH-6252, ORCH-6253, ORCH-6256: the shape of session 13's failed run: we closed the engine
    connection at once, the engine never logged the cancel and released the slot
    6.785 s after it. The engine's part is far over 2 steps and the ceiling is
    crossed; the missing `cancel task` line is counted."""
    h = _canceled_on_engine_log()
    h["exchanges"][0]["cut"] = "client-eof"
    _released_at(h, 17.07, logged_cancel=False)  # 17.07 + 90.015 = 107.085
    figs = chaos_figures.figures(h, [])
    assert figs["cancel_slot_free_ms"]["max"] == pytest.approx(6785.0)
    assert figs["cancel_parts_ms"]["engine"]["max"] == pytest.approx(6765.0)
    assert figs["cancel_parts_ms"]["engine_missed_cancel"] == 1
    fails = chaos_cancel.cancel_gate(figs, min_n=1)
    assert [f.split(":")[0] for f in fails] == ["engine", "ceiling"], fails
    # the same as the old gate saw it (one figure, p99 <= 250 ms): failed too, but a
    # 240 ms release, one step over, passes the new gate only when the step is measured
    # that long in the same run
    _released_at(h := _canceled_on_engine_log(), 10.525, logged_cancel=True)
    h["exchanges"][0]["cut"] = "client-eof"
    figs = chaos_figures.figures(h, [])
    assert figs["cancel_parts_ms"]["engine"]["max"] == pytest.approx(220.0)
    assert [f.split(":")[0] for f in chaos_cancel.cancel_gate(figs, min_n=1)] == ["engine"]
    figs["token_gap_ms"]["p99"] = 90.0  # 2 x 90 + 50 = 230 ms
    assert chaos_cancel.cancel_gate(figs, min_n=1) == []


def test_the_cancel_gate_fails_when_our_side_is_slow_or_never_closes() -> None:
    """ORCH-6251, ORCH-6253, ORCH-6256: the proxy saw our close 300 ms after the cancel (the engine
    then freed the slot in 25 ms: its part is fine, ours is not); a connection we never
    closed is an infinite part of ours, and one the engine ended first is counted."""
    h = _canceled_on_engine_log()
    h["exchanges"][0] |= {"cut": "client-eof", "closed": 100.60}
    _released_at(h, 10.61, logged_cancel=True)  # 100.625
    figs = chaos_figures.figures(h, [])
    assert figs["cancel_parts_ms"]["ours"]["max"] == pytest.approx(300.0)
    assert figs["cancel_parts_ms"]["engine"]["max"] == pytest.approx(25.0)
    assert [f.split(":")[0] for f in chaos_cancel.cancel_gate(figs, min_n=1)] == ["ours"]
    h["exchanges"][0] |= {"cut": "", "closed": None}  # never closed by anyone
    parts = chaos_cancel.cancel_parts(h)
    assert parts.ours == [math.inf] and parts.not_closed == 1 and parts.engine == []
    figs = chaos_figures.figures(h, [])
    fails = chaos_cancel.cancel_gate(figs, min_n=0)
    assert [f.split(":")[0] for f in fails] == ["ours", "ceiling"], fails
    h["exchanges"][0] |= {"cut": "upstream-eof", "closed": 100.9}  # the engine's end
    parts = chaos_cancel.cancel_parts(h)
    assert parts.ours == [pytest.approx(0.6)] and parts.not_closed == 1
    # kept open after the cancel, the request ran to its final chunk 3 s later: the leak
    # a pooled or forgotten connection would be; its time open is ours
    h["exchanges"][0] |= {"final": True, "t_final": 103.2, "closed": 103.21}
    figs = chaos_figures.figures(h, [])
    assert figs["cancel_parts_ms"]["ours"]["max"] == pytest.approx(2910.0)
    fails = chaos_cancel.cancel_gate(figs, min_n=0)
    assert [f.split(":")[0] for f in fails] == ["ours", "ceiling"], fails
    h["exchanges"][0]["t_final"] = 100.29  # its final chunk came before the cancel
    assert chaos_cancel.cancel_parts(h).ours == []


def test_a_slot_the_engine_named_for_another_request_is_not_the_canceled_ones() -> None:
    """ORCH-6254, ORCH-6256, session 13's 6.8 s: two requests reached engine 0 4 ms apart, a
    neighbour's 183-token prompt and ours of 62 tokens. The neighbour's task appeared
    first (13 ms after ours was opened, its prefill at 16 of 183 tokens, less than our 62:
    a prefill in progress), ours 147 ms after. Matching by the nearest appearance took
    the neighbour's slot and measured its end, 6.8 s later, as our cancel's; the slot
    the neighbour's final chunk named (1) is its own, so ours is slot 0."""
    h = _history()
    r = h["tasks"][0]
    r["events"][-1][3] = {"tokens_out": 1, "reason": "canceled"}
    r["cancel"] = {"t_send": 100.0, "t_recv": 100.003, "status": 204}
    h["exchanges"] = [
        {"arrival": 1, "engine": 0, "opened": 98.806, "closed": 106.786, "final": True,
         "id_slot": 1, "prompt_tokens": 183, "cut": "upstream-eof"},
        {"arrival": 0, "engine": 0, "opened": 98.810, "closed": 100.001, "final": False,
         "id_slot": None, "prompt_tokens": 62, "cut": "client-eof"},
    ]  # fmt: skip

    def sample(t: float, *slots: tuple[int, bool, int | None, int | None]) -> dict[str, Any]:
        keys = ("id", "is_processing", "id_task", "prompt_len")
        return {
            "t_sent": t - 0.002,
            "t": t,
            "slots": [dict(zip(keys, s, strict=True)) for s in slots],
        }

    h["slot_samples"] = {
        "0": [
            sample(98.794, (0, False, None, None), (1, False, None, None)),
            sample(98.819, (0, False, None, None), (1, True, 2851, 16)),
            sample(98.957, (0, True, 2853, 17), (1, True, 2851, 16)),
            sample(99.840, (0, True, 2853, 62), (1, True, 2851, 19)),
            sample(100.356, (0, True, 2915, 16), (1, True, 2851, 33)),
        ]
    }
    (m,) = chaos_cancel.cancel_matches(h)
    assert m["id_task"] == 2853
    assert m["t_seen_free"] == pytest.approx(100.356)
    # without the neighbour's word on its slot the nearest appearance is ambiguous no
    # more: it would be slot 1, so the rule is what singles out ours
    h["exchanges"][0]["id_slot"] = None
    assert chaos_cancel.cancel_matches(h)[0]["id_task"] == 2851


def test_session_13s_failed_whole_suite_run_measured_again() -> None:
    """ORCH-6254 on the kept history of session 13's failed run (`reports/ci-seed7-
    20261204T211944Z`, p99 6,785 ms then): arrival 92 is tied to its own task (2853),
    every matched task has the engine's `cancel task` line, the whole reads 340.7 ms at
    most, and the gate passes it (the engine's part 339.6 ms, within 2 x the run's step
    p99 of 206.8 ms + 50 ms; ours 12.4 ms)."""
    import gzip
    import json

    path = HERE / "reports" / "ci-seed7-20261204T211944Z.history.json.gz"
    with gzip.open(path, "rt") as f:
        h = json.load(f)
    ms = {m["n"]: m for m in chaos_cancel.cancel_matches(h)}
    assert ms[92]["id_task"] == 2853
    for m in ms.values():
        runs = h["engine_logs"][str(m["engine"])]
        k = chaos_cancel.incarnation(runs, m["t_cancel"])
        assert k is not None and "cancel" in runs[k]["tasks"][str(m["id_task"])], m
    figs = chaos_figures.figures(h, [])
    assert figs["cancel_slot_free_ms"]["max"] == pytest.approx(340.7)
    assert figs["cancel_parts_ms"]["engine"]["max"] == pytest.approx(339.6)
    assert figs["cancel_parts_ms"]["ours"]["max"] == pytest.approx(12.4)
    assert chaos_cancel.cancel_gate(figs) == []
