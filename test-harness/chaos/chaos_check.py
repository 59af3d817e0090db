"""Invariant checker and figures of a chaos run (pure: works on recorded histories).

A run's history is a JSON document (see ``chaos_run.py``): one record per
arrival (every submission attempt, every SSE event with its receive time,
every connection, the cancel and its answer, a replay of the task's log after
the run), the proxies' engine exchanges, the engines' ``/slots`` samples, the
daemon's task-end log lines and the faults as injected. ``check(history)``
returns the violations (ORCH-6103) and ``figures(history)`` the numbers of
the report (ORCH-6104). Each check is proven able to fail by a planted bug
in ``test_chaos.py`` (ORCH-6105).
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from typing import Any

TERMINAL = ("end", "error")
CLEAN_REASONS = ("eos", "stop", "length")
FAIRNESS_MIN_SAMPLES = 20
FAIRNESS_BOUND = 0.15  # |observed - expected| dispatch share of backlogged tenants (see fairness)
# ORCH-6111: a submit sent while the store is down or paused is answered within the
# store client's socket timeout (10 s) plus a margin: 202, a 4xx, or 503 + Retry-After.
STORE_FAULTS = ("store_kill9", "store_sigstop")
# ORCH-6115: the same answers while pool-managerd is down or every breaker is open.
POOL_FAULTS = ("pool_managerd_kill9", "restart_storm")
OUTAGE_FAULTS = (*STORE_FAULTS, *POOL_FAULTS)
STORE_ANSWER_BOUND_S = 12.0


@dataclass
class Violation:
    check: str
    arrival: int | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "arrival": self.arrival, "detail": self.detail}


def _seq(events: list[list[Any]]) -> list[tuple[int, str, dict[str, Any]]]:
    """(id, event, data) of live events ``[t, id, event, data]`` or replay ``[id, event, data]``."""
    return [(int(e[-3]), str(e[-2]), e[-1]) for e in events]


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


def terminal_of(rec: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The task's terminal event: as its client received it (task API), or from the
    task's log replayed after the run (OpenAI API: its chunks carry no event names)."""
    if rec.get("api") == "openai":
        for e in rec.get("replay") or []:
            if e[1] in TERMINAL:
                return e[1], e[2]
        return None
    for e in rec.get("events", []):
        if e[2] in TERMINAL:
            return e[2], e[3]
    return None


def cancel_of(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The cancel of a task: the task API's cancel call, or an OpenAI client's close
    of its stream (the API's only way to cancel) counted as an answered cancel."""
    oa = rec.get("oa")
    if oa is not None:
        t = oa.get("closed")
        return None if t is None else {"t_send": t, "t_recv": t, "status": 204, "by": "close"}
    c: dict[str, Any] | None = rec.get("cancel")
    return c


_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


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
    rseq = _seq(replay)
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
        for x in _exchanges_of(history, n):
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


def outcome(rec: dict[str, Any]) -> str:
    """completed | canceled | failed:<CODE> | lost | rejected:<status or CODE>."""
    if not rec.get("task_id"):
        subs = rec.get("submits") or [{}]
        last = subs[-1]
        return f"rejected:{last.get('code') or last.get('status')}"
    term = terminal_of(rec)
    if term is None and rec.get("api") == "openai" and rec.get("replay_status") == 404:
        # the task's log was evicted before the replay (event_log_retention_s): its
        # outcome as the client saw it ([DONE], an error chunk, or its own close)
        oa = rec.get("oa") or {}
        if oa.get("error") is not None:
            err = oa["error"][1] if isinstance(oa["error"], list) else oa["error"]
            # the OpenAI frontend writes the task API's codes in lower case
            return f"failed:{str((err or {}).get('code')).upper()}"
        if oa.get("closed") is not None:
            return "canceled"
        if oa.get("done") is not None:
            return "completed"
    if term is None:
        return "lost"
    ev, data = term
    if ev == "error":
        return f"failed:{data.get('code')}"
    return "canceled" if data.get("reason") == "canceled" else "completed"


def _exchanges_of(history: dict[str, Any], n: int) -> list[dict[str, Any]]:
    xs = [x for x in history.get("exchanges") or [] if x.get("arrival") == n]
    return sorted(xs, key=lambda x: x["opened"])


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
        live = _seq(rec.get("events", []))
        if not any(ev in TERMINAL for _, ev, _ in live):
            out.append(
                Violation("lost", n, "202-accepted but no terminal event reached the client")
            )
        out += _check_log(n, "live", live)
        replay = rec.get("replay")
        if replay is not None and not _evicted(history, rec):
            rseq = _seq(replay)
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
            for x in _exchanges_of(history, n):
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
            xs = _exchanges_of(history, n)
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


_POOL_FIGURES = (
    "open_after_s",
    "kills",
    "unready_seen",
    "unready_after_open_s",
    "ready_after_reset_s",
    "reset_status",
    "engines_left_running",
)


def store_figures(
    history: dict[str, Any], kinds: tuple[str, ...] = (*STORE_FAULTS, "orchestratord_kill9")
) -> list[dict[str, Any]]:
    """Per store or orchestratord fault (ORCH-6112): the submits sent during it and
    their answers, outage -> first 503, the longest answer, restart -> first 202, and
    what became of the tasks streaming when it hit."""
    out: list[dict[str, Any]] = []
    by_n = {r["n"]: r for r in history["tasks"]}
    for f in history.get("faults", []):
        if f["kind"] not in kinds:
            continue
        t0, t1 = f["t_start"], f.get("t_end") or f["t_start"]
        subs = [
            s for r in history["tasks"] for s in r.get("submits", []) if t0 <= s["t_send"] <= t1
        ]
        codes: dict[str, int] = {}
        for s in subs:
            k = str(s.get("status") or s.get("code", "")[:24])
            codes[k] = codes.get(k, 0) + 1
        first503 = min((s["t_recv"] for s in subs if s.get("status") == 503), default=None)
        after = [
            s["t_recv"]
            for r in history["tasks"]
            for s in r.get("submits", [])
            if s.get("status") == 202 and s["t_send"] >= t1
        ]
        outcomes: dict[str, int] = {}
        resumed = 0
        for n in f.get("in_flight", []):
            r = by_n.get(n)
            if r is None:
                continue
            o = outcome(r)
            outcomes[o] = outcomes.get(o, 0) + 1
            resumed += any(e[2] == "metrics" and e[3].get("resumed") for e in r.get("events", []))
        out.append(
            {
                "kind": f["kind"],
                "n": f["n"],
                "outage_s": round(t1 - t0, 3),
                "submits": len(subs),
                "answers": dict(sorted(codes.items())),
                "first_503_s": None if first503 is None else round(first503 - t0, 3),
                "max_answer_s": round(max((s["t_recv"] - s["t_send"] for s in subs), default=0), 3),
                "first_202_after_s": round(min(after) - t1, 3) if after else None,
                "in_flight": len(f.get("in_flight", [])),
                "in_flight_outcomes": dict(sorted(outcomes.items())),
                "resumed": resumed,
                "ready_after_start_s": f.get("ready_after_start_s"),
            }
            | {k: f[k] for k in _POOL_FIGURES if k in f}
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


def fairness(history: dict[str, Any]) -> dict[str, Any]:
    """Dispatch shares among backlogged tenants of one priority, against their weights.

    Walks the ``started`` events in receive order; at each, the tenants with an
    accepted, not yet started (nor ended) task of that priority are backlogged,
    and each one's expected share is its weight, capped at its number of waiting
    tasks (a round can serve no more), over the sum of theirs. The deviation is
    the largest |observed - expected| share over tenants (0 = exactly fair).
    """
    weights: dict[str, int] = history.get("weights", {})
    starts: list[tuple[float, str, str, int]] = []  # (t, priority, tenant, n)
    ended_ts = {
        line.get("job_id"): float(line["ts"])
        for line in history.get("daemon_task_ends", [])
        if line.get("ts") is not None
    }
    for r in history["tasks"]:
        if not r.get("task_id"):
            continue
        if r.get("api") == "openai":
            # no event names in its chunks: the start from the replayed log's
            # queue wait, counted from the answer's headers (sent at admission)
            st = next((d for _, ev, d in _seq(r.get("replay") or []) if ev == "started"), None)
            if st is not None:
                t_start = r["t_accepted"] + st.get("queue_wait_ms", 0) / 1000
                starts.append((t_start, r["priority"], r["tenant"], r["n"]))
            continue
        for e in r.get("events", []):
            if e[2] == "started":
                starts.append((e[0], r["priority"], r["tenant"], r["n"]))
                break
    starts.sort()
    accepted = {r["n"]: r["t_accepted"] for r in history["tasks"] if r.get("task_id")}
    started_at = {n: t for t, _, _, n in starts}
    for r in history["tasks"]:  # a task that ended queued (canceled, expired) left then
        if r.get("task_id") and r["n"] not in started_at:
            term = next((e[0] for e in r.get("events", []) if e[2] in TERMINAL), None)
            if term is None:
                term = ended_ts.get(r["task_id"])
            started_at[r["n"]] = term if term is not None else float("inf")
    by_n = {r["n"]: r for r in history["tasks"]}
    observed: dict[str, float] = {}
    expected: dict[str, float] = {}
    samples = 0
    for t, prio, tenant, _n in starts:
        waiting: dict[str, int] = {}
        for m, ta in accepted.items():
            if ta < t and started_at.get(m, float("inf")) >= t and by_n[m]["priority"] == prio:
                waiting[by_n[m]["tenant"]] = waiting.get(by_n[m]["tenant"], 0) + 1
        waiting[tenant] = max(1, waiting.get(tenant, 0))
        if len(waiting) < 2:
            continue
        samples += 1
        # Weighted round robin serves a tenant at most its queued tasks per round.
        eff = {x: min(weights.get(x, 1), k) for x, k in waiting.items()}
        total = sum(eff.values())
        for x, w in eff.items():
            expected[x] = expected.get(x, 0.0) + w / total
        observed[tenant] = observed.get(tenant, 0.0) + 1
    dev = 0.0
    if samples:
        dev = max(abs(observed.get(x, 0.0) - expected[x]) / samples for x in expected)
    return {
        "samples": samples,
        "deviation": round(dev, 4),
        "observed": {k: round(v / samples, 3) for k, v in sorted(observed.items())}
        if samples
        else {},
        "expected": {k: round(v / samples, 3) for k, v in sorted(expected.items())}
        if samples
        else {},
    }


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return round(xs[k], 4)


def _under_fault(history: dict[str, Any], engine: int, t: float) -> bool:
    """An engine fault (not overload) on ``engine`` was active around ``t`` (±1 s):
    a stopped, cut or slowed engine cannot free a slot on time by construction."""
    for f in history.get("faults", []):
        if f["kind"] == "overload" or f.get("target") != engine:
            continue
        if f["t_start"] - 1.0 <= t <= (f.get("t_end") or f["t_start"]) + 1.0:
            return True
    return False


def cancel_slot_free(history: dict[str, Any], *, exclude_faults: bool = False) -> list[float]:
    """Seconds from a cancel request to its engine slot freed, for cancels of a
    request the engine was running (its exchange open, not final, at the cancel)."""
    samples: dict[str, list[dict[str, Any]]] = history.get("slot_samples", {})
    out: list[float] = []
    for r in history["tasks"]:
        c = cancel_of(r)
        if not c or c.get("status") != 204:
            continue
        xs = [
            x
            for x in _exchanges_of(history, r["n"])
            if x["opened"] < c["t_send"]
            and (x.get("closed") is None or x["closed"] > c["t_send"])
            and not x.get("final")
            and x.get("prompt_tokens") is not None
        ]
        if not xs:
            continue
        x = xs[-1]
        if _under_fault(history, x["engine"], c["t_send"]) != exclude_faults:
            continue
        series = samples.get(str(x["engine"]), [])
        before = [s for s in series if s["t"] <= c["t_send"]]
        if not before:
            continue

        # The engine's slot running this request (llama-server names the slot in the
        # final chunk only): a busy slot whose prompt length is the request's (±1:
        # /slots counts the token being sampled or not) and whose task appeared when
        # the request was opened; skipped when that does not single out one slot.
        def appeared(slot: dict[str, Any], series: list[dict[str, Any]] = series) -> float:
            return next(
                s["t"]
                for s in series
                if any(
                    q["id"] == slot["id"] and q["id_task"] == slot["id_task"] for q in s["slots"]
                )
            )

        # A slot whose task appeared before the request was opened runs another
        # request; during prefill /slots counts only the prompt tokens evaluated so far
        # (a CI run matched a neighbour's 56-token prompt to this 55-token request,
        # whose own slot showed 7, and reported that neighbour's end as 594 ms).
        match = sorted(
            (abs(appeared(s) - x["opened"]), s["id"], s)
            for s in before[-1]["slots"]
            if s["is_processing"]
            and s.get("prompt_len") is not None
            and s["prompt_len"] <= x["prompt_tokens"] + 1
            and (s["prompt_len"] >= x["prompt_tokens"] - 1 or s["prompt_len"] < x["prompt_tokens"])
            and appeared(s) >= x["opened"] - 0.05
        )
        if not match or match[0][0] > 1.0 or (len(match) > 1 and match[1][0] - match[0][0] < 0.1):
            continue
        slot0 = match[0][2]
        for s in series:
            if s["t"] <= c["t_send"]:
                continue
            slot = next((q for q in s["slots"] if q["id"] == slot0["id"]), None)
            if slot is None:
                break
            if not slot["is_processing"] or slot["id_task"] != slot0["id_task"]:
                out.append(s["t"] - c["t_send"])
                break
    return out


def _first_backoff(r: dict[str, Any], field: str) -> dict[str, Any] | None:
    return next((s for s in r.get("submits", []) if s.get(field) is not None), None)


def retry_after_errors(history: dict[str, Any], field: str = "retry_after") -> list[float]:
    """|advertised wait - actual wait until the limit that refused admitted again| (s).

    One sample per arrival that got a 429/503 with a forecast: from that answer
    to the next 202 under the same limit: of the same tenant for a quota refusal
    (``policy_label`` ``quota``), of any tenant for a full queue or an unready
    pool. Every refused client probes every 0.5 s, so that admission marks when
    there was room again; which waiting client wins it is a lottery the forecast
    cannot know (that per-client wait is ``retry_after_client_errors``).
    """
    scale = 1000.0 if field == "backoff_ms" else 1.0
    admits: dict[str, list[float]] = {}
    for r in history["tasks"]:
        if r.get("task_id"):
            admits.setdefault(r["tenant"], []).append(r["t_accepted"])
            admits.setdefault("*", []).append(r["t_accepted"])
    for v in admits.values():
        v.sort()
    out: list[float] = []
    for r in history["tasks"]:
        first = _first_backoff(r, field)
        if first is None:
            continue
        scope = r["tenant"] if first.get("policy") == "quota" else "*"
        nxt = next((t for t in admits.get(scope, []) if t > first["t_recv"]), None)
        if nxt is None:
            continue
        out.append(abs(nxt - first["t_recv"] - float(first[field]) / scale))
    return out


def retry_after_client_errors(history: dict[str, Any]) -> list[float]:
    """|Retry-After - this client's own wait to its 202| of rejected-then-admitted arrivals."""
    out: list[float] = []
    for r in history["tasks"]:
        first = _first_backoff(r, "retry_after")
        if first is None or not r.get("task_id"):
            continue
        out.append(abs(r["t_accepted"] - first["t_recv"] - float(first["retry_after"])))
    return out


def recoveries(history: dict[str, Any]) -> list[dict[str, Any]]:
    """Per fault: how fast in-flight work on the target ended (``detect_s``), with which
    codes, and when the target engine served a new task again (``recovery_s``)."""
    res: list[dict[str, Any]] = []
    tasks = [r for r in history["tasks"] if r.get("task_id")]
    for f in history.get("faults", []):
        t0, t1 = f["t_start"], f.get("t_end") or f["t_start"]
        rid = f.get("replica_id")
        if f["kind"] in (*OUTAGE_FAULTS, "orchestratord_kill9"):
            continue  # no engine target: see store_figures
        item: dict[str, Any] = {"kind": f["kind"], "n": f["n"], "target": f.get("target")}
        if f["kind"] == "overload":
            until = min(
                (g["t_start"] for g in history["faults"] if g["t_start"] > t0), default=1e18
            )
            rej = [
                s["t_recv"]
                for r in history["tasks"]
                for s in r.get("submits", [])
                if s["status"] == 429 and t0 <= s["t_recv"] < until and s.get("policy") != "quota"
            ]
            item["backpressure_s"] = round(max(rej) - t0, 3) if rej else 0.0
            item["rejected_429"] = len(rej)
            res.append(item)
            continue
        hit: list[tuple[float, str]] = []
        for r in tasks:
            st = next((e for e in r["events"] if e[2] == "started"), None)
            term = next((e for e in r["events"] if e[2] in TERMINAL), None)
            if st is None or st[3].get("replica_id") != rid or st[0] > t0:
                continue
            if term is None or term[0] < t0:
                continue
            code = term[3].get("code") if term[2] == "error" else f"end:{term[3].get('reason')}"
            hit.append((term[0] - t0, str(code)))
        item["in_flight"] = len(hit)
        item["codes"] = sorted({c for _, c in hit})
        failed = [d for d, c in hit if not c.startswith("end:")]
        item["detect_s"] = round(max(failed), 3) if failed else None
        later = [
            st[0]
            for r in tasks
            for st in r["events"][:1]
            if st[2] == "started" and st[3].get("replica_id") == rid and st[0] > t1
        ]
        item["recovery_s"] = round(min(later) - t0, 3) if later else None
        res.append(item)
    return res


def cancel_upstream_closed(history: dict[str, Any]) -> list[float]:
    """Seconds from a cancel request to orchestratord closing the engine request
    (the proxy saw the connection end): orchestratord's own part of a cancel."""
    out: list[float] = []
    for r in history["tasks"]:
        c = cancel_of(r)
        if not c or c.get("status") != 204:
            continue
        for x in _exchanges_of(history, r["n"]):
            closed = x.get("closed")
            if x["opened"] < c["t_send"] and not x.get("final") and closed and closed > c["t_send"]:
                if x.get("cut") == "client-eof":
                    out.append(closed - c["t_send"])
    return out


def token_gaps(history: dict[str, Any]) -> list[float]:
    """Seconds between consecutive tokens of one task as clients received them: about
    one engine batch step, the floor under any cancel -> slot-free latency."""
    out: list[float] = []
    for r in history["tasks"]:
        ts = [e[0] for e in r.get("events", []) if e[2] == "token"]
        out += [b - a for a, b in itertools.pairwise(ts)]
    return out


def figures(history: dict[str, Any], violations: list[Violation]) -> dict[str, Any]:
    tasks = history["tasks"]
    cancels: dict[str, int] = {}
    for r in tasks:
        c = cancel_of(r)
        if c:
            key = "close" if c.get("by") == "close" else str(c.get("status"))
            cancels[key] = cancels.get(key, 0) + 1
    bo = retry_after_errors(history, "backoff_ms")
    gaps = token_gaps(history)
    cuc = cancel_upstream_closed(history)
    rc = retry_after_client_errors(history)
    counts: dict[str, int] = {}
    for r in tasks:
        o = outcome(r)
        counts[o] = counts.get(o, 0) + 1
    accepted = sum(1 for r in tasks if r.get("task_id"))
    failed = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("failed:")}
    rejected = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rejected:")}
    csf = cancel_slot_free(history)
    csf_fault = cancel_slot_free(history, exclude_faults=True)
    ra = retry_after_errors(history)
    rec = recoveries(history)
    kill_reset = [
        r["detect_s"] for r in rec if r["kind"] == "engine_kill9" and r["detect_s"] is not None
    ]
    tokens = sum(1 for r in tasks for e in r.get("events", []) if e[2] == "token") + sum(
        1 for r in tasks for c in (r.get("oa") or {}).get("chunks", []) if c[2] is None
    )
    by_api: dict[str, int] = {}
    for r in tasks:
        if r.get("task_id"):
            api = r.get("api", "tasks")
            by_api[api] = by_api.get(api, 0) + 1
    return {
        "arrivals": len(tasks),
        "submissions": sum(len(r.get("submits", [])) for r in tasks),
        "accepted": accepted,
        "accepted_by_api": dict(sorted(by_api.items())),
        "completed": counts.get("completed", 0),
        "canceled": counts.get("canceled", 0),
        "failed_by_code": dict(sorted(failed.items())),
        "rejected_by_code": dict(sorted(rejected.items())),
        "lost": counts.get("lost", 0),
        "violations": len(violations),
        "violations_by_check": dict(
            sorted(
                {
                    v.check: sum(1 for w in violations if w.check == v.check) for v in violations
                }.items()
            )
        ),
        "tokens_streamed": tokens,
        "cancel_slot_free_ms": {
            "n": len(csf),
            "p50": None if not csf else round(1000 * statistics.median(csf), 1),
            "p99": None if not csf else round(1000 * (_pct(csf, 99) or 0), 1),
            "max": None if not csf else round(1000 * max(csf), 1),
            "under_fault_n": len(csf_fault),
            "under_fault_max": None if not csf_fault else round(1000 * max(csf_fault), 1),
        },
        "cancel_upstream_closed_ms": {
            "n": len(cuc),
            "p50": None if not cuc else round(1000 * (_pct(cuc, 50) or 0), 1),
            "p99": None if not cuc else round(1000 * (_pct(cuc, 99) or 0), 1),
        },
        "token_gap_ms": {
            "p50": None if not gaps else round(1000 * (_pct(gaps, 50) or 0), 1),
            "p99": None if not gaps else round(1000 * (_pct(gaps, 99) or 0), 1),
        },
        "retry_after_error_s": {"n": len(ra), "p50": _pct(ra, 50), "p90": _pct(ra, 90)},
        "backoff_ms_error_s": {"n": len(bo), "p50": _pct(bo, 50), "p90": _pct(bo, 90)},
        "retry_after_client_error_s": {"n": len(rc), "p50": _pct(rc, 50), "p90": _pct(rc, 90)},
        "cancel_answers": dict(sorted(cancels.items())),
        "recovery": rec,
        "engine_kill_to_worker_reset_s_max": max(kill_reset) if kill_reset else None,
        "fairness": fairness(history),
        "store_faults": store_figures(history),
        "pool_faults": store_figures(history, POOL_FAULTS),
    }
