"""Invariant checker of a chaos run (pure: works on recorded histories).

A run's history is a JSON document (see ``chaos_run.py``): one record per
arrival (every submission attempt, every SSE event with its receive time,
every connection, the cancel and its answer, a replay of the task's log after
the run), the proxies' engine exchanges, the engines' ``/slots`` samples, the
daemon's task-end log lines and the faults as injected. ``check(history)``
returns the violations (ORCH-6103); ``chaos_figures.figures(history)`` gives the
numbers of the report (ORCH-6104). Each check is proven able to fail by a planted
bug in ``test_chaos_check.py`` (ORCH-6105).
"""

from __future__ import annotations

from typing import Any

from chaos_fairness import fairness
from chaos_history import (
    CLEAN_REASONS,
    FAIRNESS_BOUND,
    FAIRNESS_MIN_SAMPLES,
    OUTAGE_FAULTS,
    STORE_ANSWER_BOUND_S,
    TERMINAL,
    Violation,
    exchanges_of,
    outcome,
    seq,
    terminal_of,
)

_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


def _check_log(n: int, where: str, seq: list[tuple[int, str, dict[str, Any]]]) -> list[Violation]:
    out: list[Violation] = []
    terms = [k for k, (_, ev, _) in enumerate(seq) if ev in TERMINAL]
    if len(terms) > 1:
        out.append(Violation("one_terminal", n, f"{where}: {len(terms)} terminal events"))
    if terms and terms[0] != len(seq) - 1:
        after = [ev for _, ev, _ in seq[terms[0] + 1 :]]
        out.append(Violation("terminal_last", n, f"{where}: events after the terminal: {after}"))
    ids = [i for i, _, _ in seq]
    if ids != list(range(len(ids))):
        out.append(Violation("event_ids", n, f"{where}: ids not 0..{len(ids) - 1}: {ids}"))
    toks = [d.get("i") for _, ev, d in seq if ev == "token"]
    if toks != list(range(len(toks))):
        out.append(Violation("token_indices", n, f"{where}: token indices {toks}"))
    ends = [d for _, ev, d in seq if ev == "end"]
    if ends and ends[0].get("tokens_out") != len(toks):
        out.append(
            Violation(
                "token_indices",
                n,
                f"{where}: end says tokens_out={ends[0].get('tokens_out')}, "
                f"{len(toks)} tokens sent",
            )
        )
    return out


def _check_openai(
    history: dict[str, Any], rec: dict[str, Any], ended_logs: dict[str, list[dict[str, Any]]]
) -> list[Violation]:
    """ORCH-6108: an OpenAI-API client's chunks against the task's own log.

    The log (replayed after the run) must be well formed and end once; the client's
    text chunks must be that log's tokens in order (all of them when it read to the
    end); ``[DONE]`` only after a clean end whose ``finish_reason`` matches, never
    after a failure (which ends with an error chunk); after a client's close no engine
    request may start; and the daemon logs one matching ``task ended`` line.
    """
    n, oa = rec["n"], rec.get("oa") or {}
    out: list[Violation] = []
    replay = rec.get("replay")
    closed, done, err = oa.get("closed"), oa.get("done"), oa.get("error")
    if closed is None and done is None and err is None:
        out.append(Violation("lost", n, "OpenAI API: the stream ended without [DONE] or error"))
    if replay is None or _evicted(history, rec):
        return out
    rseq = seq(replay)
    out += _check_log(n, "replay", rseq)
    term = terminal_of(rec)
    if term is None:
        out.append(Violation("lost", n, "OpenAI API: the task's log has no terminal event"))
    tokens = [d.get("t") for _, ev, d in rseq if ev == "token"]
    texts = [c[1] for c in oa.get("chunks", []) if c[2] is None]
    finals = [c for c in oa.get("chunks", []) if c[2] is not None]
    if texts != tokens[: len(texts)] or (closed is None and texts != tokens):
        out.append(
            Violation(
                "openai_text", n, f"client chunks {len(texts)} vs log tokens {len(tokens)} differ"
            )
        )
    if done is not None:
        if term is None or term[0] != "end" or term[1].get("reason") not in CLEAN_REASONS:
            out.append(
                Violation("clean_end_from_failed_engine", n, f"[DONE] but the log ends {term}")
            )
        elif len(finals) != 1 or finals[0][2] != _FINISH[term[1]["reason"]]:
            got = [c[2] for c in finals]
            out.append(
                Violation("openai_finish", n, f"finish_reason {got} for {term[1]['reason']}")
            )
        if err is not None or any(c[0] > done for c in oa.get("chunks", [])):
            out.append(Violation("terminal_last", n, "OpenAI API: data after [DONE]"))
    if closed is not None:
        for x in exchanges_of(history, n):
            aborted = (
                not x.get("bytes_down")
                and x.get("closed") is not None
                and x["closed"] - x["opened"] <= 0.25
            )
            if x["opened"] > closed + 0.25 and not aborted:
                out.append(
                    Violation(
                        "no_retry_after_cancel",
                        n,
                        f"engine {x['engine']} request opened {x['opened'] - closed:.3f}s "
                        "after the client closed its stream",
                    )
                )
    if "daemon_task_ends" in history and history.get("daemon_account", True):
        lines = ended_logs.get(rec["task_id"], [])
        if len(lines) != 1:
            out.append(Violation("daemon_log", n, f"{len(lines)} 'task ended' log lines"))
    return out


def check(history: dict[str, Any]) -> list[Violation]:
    out: list[Violation] = []
    tasks: list[dict[str, Any]] = history["tasks"]
    ended_logs: dict[str, list[dict[str, Any]]] = {}
    for line in history.get("daemon_task_ends", []):
        ended_logs.setdefault(line.get("job_id", ""), []).append(line)
    for rec in tasks:
        n = rec["n"]
        if not rec.get("task_id"):
            continue
        if rec.get("api") == "openai":
            out += _check_openai(history, rec, ended_logs)
            continue
        live = seq(rec.get("events", []))
        if not any(ev in TERMINAL for _, ev, _ in live):
            out.append(
                Violation("lost", n, "202-accepted but no terminal event reached the client")
            )
        out += _check_log(n, "live", live)
        replay = rec.get("replay")
        if replay is not None and not _evicted(history, rec):
            rseq = seq(replay)
            out += _check_log(n, "replay", rseq)
            if [(i, ev) for i, ev, _ in rseq] != [(i, ev) for i, ev, _ in live]:
                out.append(Violation("replay", n, "the replayed log differs from the live events"))
        # Cancel: its 204 comes after the terminal was appended (ORCH-2004).
        cancel = rec.get("cancel")
        term = terminal_of(rec)
        if cancel and cancel.get("status") == 204:
            if term is None:
                out.append(Violation("no_token_after_cancel", n, "204 but no terminal event"))
            toks_after = [
                e for e in rec.get("events", []) if e[2] == "token" and _after_terminal(rec, e)
            ]
            if toks_after:
                out.append(
                    Violation("no_token_after_cancel", n, f"{len(toks_after)} tokens after the end")
                )
            for x in exchanges_of(history, n):
                # A request orchestratord was already sending when the cancel came and
                # aborted at once (no byte back, closed within 250 ms) did no engine work;
                # any other request seen after the 204 is a retry.
                aborted = (
                    not x.get("bytes_down")
                    and x.get("closed") is not None
                    and x["closed"] - x["opened"] <= 0.25
                )
                if x["opened"] > cancel["t_recv"] and not aborted:
                    out.append(
                        Violation(
                            "no_retry_after_cancel",
                            n,
                            f"engine {x['engine']} request opened "
                            f"{x['opened'] - cancel['t_recv']:.3f}s "
                            "after the cancel's 204",
                        )
                    )
        # A failure is typed: an error terminal carries its code (ORCH-6115).
        if term is not None and term[0] == "error" and not term[1].get("code"):
            out.append(Violation("typed_error", n, f"error terminal without a code: {term[1]}"))
        # A cut engine stream is never a clean end (needs the proxies' exchanges).
        proxied = history.get("exchanges", []) is not None
        if (
            proxied
            and term is not None
            and term[0] == "end"
            and term[1].get("reason") in CLEAN_REASONS
        ):
            xs = exchanges_of(history, n)
            if not xs:
                out.append(
                    Violation("clean_end_from_failed_engine", n, "clean end, no engine request")
                )
            elif not xs[-1].get("final"):
                out.append(
                    Violation(
                        "clean_end_from_failed_engine",
                        n,
                        f"clean end but engine {xs[-1]['engine']} never sent its final chunk "
                        f"(cut: {xs[-1].get('cut')})",
                    )
                )
        # The daemon's own account: one task-end log line, agreeing with the client.
        if "daemon_task_ends" in history and history.get("daemon_account", True):
            lines = ended_logs.get(rec["task_id"], [])
            if len(lines) != 1:
                out.append(Violation("daemon_log", n, f"{len(lines)} 'task ended' log lines"))
            elif term is not None:
                want = {"end": "completed", "error": "failed"}[term[0]]
                if term[0] == "end" and term[1].get("reason") == "canceled":
                    want = "canceled"
                if lines[0].get("state") != want:
                    out.append(
                        Violation(
                            "daemon_log", n, f"log state {lines[0].get('state')} vs client {want}"
                        )
                    )
    for eng, slots in (history.get("slots_after_run") or {}).items():
        busy = [s.get("id") for s in slots if s.get("is_processing") or s.get("error")]
        if busy:
            out.append(
                Violation("slot_leak", None, f"engine {eng}: slots {busy} busy after the run")
            )
    out += _check_store_outage(history)
    out += _check_pool_faults(history)
    out += _check_quota(history)
    out += _check_session_turns(history)
    out += _check_metrics(history)
    fair = fairness(history)
    if fair["samples"] >= FAIRNESS_MIN_SAMPLES and fair["deviation"] > FAIRNESS_BOUND:
        out.append(Violation("fairness", None, f"dispatch share deviation {fair}"))
    return out


def _evicted(history: dict[str, Any], rec: dict[str, Any]) -> bool:
    """The task's log was evicted by design before the replay (404 for a task that
    ended more than ``event_log_retention_s`` before the replay at the end of the run);
    histories without ``replay_status`` (older runners) are judged by the times."""
    if rec.get("replay_status") is not None:
        return rec["replay_status"] == 404
    if rec.get("replay") != []:
        return False
    retention = float(history.get("event_log_retention_s", 600.0))
    term = next((e[0] for e in rec.get("events", []) if e[2] in TERMINAL), None)
    replayed_after = (history.get("load_window") or [0.0, 0.0])[1]
    return term is not None and replayed_after - term > retention


def _after_terminal(rec: dict[str, Any], ev: list[Any]) -> bool:
    seen = False
    for e in rec.get("events", []):
        if e is ev:
            return seen
        if e[2] in TERMINAL:
            seen = True
    return False


def _metric_total(lines: list[str], name: str) -> float:
    return sum(
        float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith((name + "{", name + " "))
    )


def _check_metrics(history: dict[str, Any]) -> list[Violation]:
    """orchestratord's own counters agree with what the clients saw."""
    lines = history.get("orch_metrics_tasks")
    if lines is None or not history.get("daemon_account", True):
        return []
    out: list[Violation] = []
    outcomes = [outcome(r) for r in history["tasks"]]
    accepted = sum(1 for r in history["tasks"] if r.get("task_id"))
    for name, want in (
        ("tasks_enqueued_total", accepted),
        ("tasks_canceled_total", outcomes.count("canceled")),
    ):
        got = _metric_total(lines, name)
        if got != want:
            out.append(Violation("daemon_metrics", None, f"{name} = {got:g}, clients saw {want}"))
    return out


def _store_windows(history: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in history.get("faults", []) if f["kind"] in OUTAGE_FAULTS]


def _check_pool_faults(history: dict[str, Any]) -> list[Violation]:
    """ORCH-6115: a restart storm opens every replica's breaker (ORCH-POOL-3015), the
    pool is then reported unready by orchestratord, and a reset (ORCH-3026) brings it
    back Ready; a pool-managerd killed with SIGKILL leaves no engine running and its
    pool is Ready again after the restart."""
    out: list[Violation] = []
    for f in history.get("faults", []):
        if f["kind"] == "restart_storm":
            if not f.get("breakers_open"):
                out.append(Violation("restart_storm", None, f"no breaker opened: {f}"))
            if not f.get("unready_seen"):
                out.append(Violation("restart_storm", None, "the pool was not reported unready"))
            if f.get("reset_status") != 200 or f.get("ready_after_reset_s") is None:
                out.append(
                    Violation(
                        "restart_storm",
                        None,
                        f"reset answered {f.get('reset_status')}, Ready again after "
                        f"{f.get('ready_after_reset_s')} s",
                    )
                )
        elif f["kind"] == "pool_managerd_kill9":
            if f.get("engines_left_running"):
                out.append(
                    Violation(
                        "pool_managerd_kill9",
                        None,
                        f"engines outlived their pool-managerd: {f['engines_left_running']}",
                    )
                )
            if f.get("ready_after_start_s") is None:
                out.append(
                    Violation("pool_managerd_kill9", None, "the pool never became Ready again")
                )
    return out


def _check_store_outage(history: dict[str, Any]) -> list[Violation]:
    """ORCH-6111 (ORCH-2516): a submit sent while the store was down or paused gets an
    answer, in bounded time, that a client can act on: a 202 (the store answered in
    time), a 4xx, or 503 with ``Retry-After``; never a 500, a 503 without
    ``Retry-After``, no answer, or an answer after ``STORE_ANSWER_BOUND_S``."""
    out: list[Violation] = []
    for f in _store_windows(history):
        t0, t1 = f["t_start"], f.get("t_end") or f["t_start"]
        for r in history["tasks"]:
            for s in r.get("submits", []):
                if not t0 <= s["t_send"] <= t1:
                    continue
                st, took = s.get("status"), s["t_recv"] - s["t_send"]
                bad = None
                if st == 503 and s.get("retry_after") is None:
                    bad = "503 without Retry-After"
                elif st is None or st == 0 or (st >= 500 and st != 503):
                    bad = f"answered {st} ({s.get('code')})"
                elif took > STORE_ANSWER_BOUND_S:
                    bad = f"answered {st} after {took:.1f} s"
                if bad:
                    out.append(
                        Violation(
                            "outage_answer",
                            r["n"],
                            f"submit during {f['kind']} (fault {f['n']}): {bad}",
                        )
                    )
    return out


def _check_session_turns(history: dict[str, Any]) -> list[Violation]:
    """A session refuses a turn for ``max_turns`` only once that many were admitted
    (a 429 is not a turn, ORCH-1402)."""
    max_turns = history.get("max_turns")
    if max_turns is None:
        return []
    out: list[Violation] = []
    admitted: dict[tuple[str, int], list[float]] = {}
    for r in history["tasks"]:
        if r.get("session") is not None and r.get("task_id"):
            admitted.setdefault((r["tenant"], r["session"]), []).append(r["t_accepted"])
    for r in history["tasks"]:
        if r.get("session") is None:
            continue
        for s in r.get("submits", []):
            if "max_turns" in (s.get("message") or ""):
                before = [
                    t for t in admitted.get((r["tenant"], r["session"]), []) if t < s["t_send"]
                ]
                if len(before) < max_turns:
                    out.append(
                        Violation(
                            "session_turns",
                            r["n"],
                            f"refused for max_turns={max_turns} after {len(before)} admitted turns",
                        )
                    )
                break
    return out


def _check_quota(history: dict[str, Any]) -> list[Violation]:
    """ORCH-1114 under overload, soundly: B surely ran alongside A's admission when
    B's 202 arrived before A was sent and the daemon ended B after A's 202."""
    quotas: dict[str, int] = history.get("quotas", {})
    ended = {
        line.get("job_id"): float(line["ts"])
        for line in history.get("daemon_task_ends", [])
        if "ts" in line
    }
    out: list[Violation] = []
    for tenant, limit in quotas.items():
        mine = [r for r in history["tasks"] if r.get("tenant") == tenant and r.get("task_id")]
        for a in mine:
            a_sent = a["submits"][-1]["t_send"]
            a_ok = a["t_accepted"]
            along = [
                b["n"]
                for b in mine
                if b is not a
                and b["t_accepted"] < a_sent
                and ended.get(b["task_id"], float("inf")) > a_ok
            ]
            if len(along) + 1 > limit:
                out.append(
                    Violation(
                        "quota",
                        a["n"],
                        f"tenant {tenant}: admitted with {len(along)} in flight {along}, "
                        f"limit {limit}",
                    )
                )
    return out
