"""The figures of a chaos run's report (ORCH-6104), pure functions of its history:
outcomes, fairness under backlog, cancel to slot free, Retry-After error, recoveries
after each fault, the store and pool-managerd outages."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from chaos_cancel import cancel_parts, cancel_slot_free, cancel_slot_free_engine
from chaos_fairness import fairness
from chaos_history import (
    OUTAGE_FAULTS,
    POOL_FAULTS,
    STORE_FAULTS,
    TERMINAL,
    Violation,
    cancel_of,
    exchanges_of,
    outcome,
)

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


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return round(xs[k], 4)


def _ms(xs: list[float]) -> dict[str, Any]:
    """n, p50, p99, max of seconds, in milliseconds."""
    return {
        "n": len(xs),
        "p50": None if not xs else round(1000 * statistics.median(xs), 1),
        "p99": None if not xs else round(1000 * (_pct(xs, 99) or 0), 1),
        "max": None if not xs else round(1000 * max(xs), 1),
    }


def _first_backoff(r: dict[str, Any], field: str) -> dict[str, Any] | None:
    return next((s for s in r.get("submits", []) if s.get(field) is not None), None)


def _cap_reopens(history: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """Per tenant with a ``max_concurrent`` (``history["quotas"]``): ``(accepted, ended)``
    of each of its tasks whose end the daemon logged (its ``task ended`` line)."""
    caps = history.get("quotas") or {}
    ends = {
        d.get("job_id"): float(d["ts"]) for d in history.get("daemon_task_ends") or [] if "ts" in d
    }
    out: dict[str, list[tuple[float, float]]] = {}
    for r in history["tasks"]:
        tid = r.get("task_id")
        if tid and r["tenant"] in caps and tid in ends:
            out.setdefault(r["tenant"], []).append((r["t_accepted"], ends[tid]))
    return out


def retry_after_errors(
    history: dict[str, Any], told: str = "forecast", reopen: bool = True
) -> list[float]:
    """|advertised wait - actual wait until the limit that refused admitted again| (s).

    One sample per arrival that got a 429/503 with a forecast: from that answer
    to the next 202 under the same limit: of the same tenant for a quota refusal
    (``policy_label`` ``quota``), of any tenant for a full queue or an unready
    pool. Every refused client probes every 0.5 s, so that admission marks when
    there was room again; which waiting client wins it is a lottery the forecast
    cannot know (that per-client wait is ``retry_after_client_errors``).

    ORCH-6269 (``reopen``, the gated figure): a refusal by a tenant's
    ``max_concurrent`` (a quota refusal of a tenant the history lists in ``quotas``
    whose message names ``max_concurrent``) is admitted again once one of the
    tenant's tasks in flight at the refusal ends, not when its next 202 comes: at that
    moment the pool's queue may be full, another limit with its own refusals and
    forecasts. Its wait ends at the earliest daemon ``task ended`` line, after the
    refusal, of the tenant's tasks accepted before it; with none logged, at the next
    202 as above. ``reopen=False`` measures every refusal to the next 202 (reported).

    ``told="forecast"`` (ORCH-6268, the gated figure): the forecast in ms the
    refusal carried (``X-Backoff-Ms``, ``retry-after-ms``), else its Retry-After;
    ``told="header"``: the Retry-After header, that forecast rounded up to whole
    seconds and at least 1 s (ORCH-1107), which alone reads 0-1 s of error.
    """
    admits: dict[str, list[float]] = {}
    for r in history["tasks"]:
        if r.get("task_id"):
            admits.setdefault(r["tenant"], []).append(r["t_accepted"])
            admits.setdefault("*", []).append(r["t_accepted"])
    for v in admits.values():
        v.sort()
    caps = _cap_reopens(history) if reopen else {}
    out: list[float] = []
    for r in history["tasks"]:
        first = _first_backoff(r, "retry_after")
        if first is None:
            continue
        t = first["t_recv"]
        scope = r["tenant"] if first.get("policy") == "quota" else "*"
        nxt = next((a for a in admits.get(scope, []) if a > t), None)
        if scope in caps and "max_concurrent" in str(first.get("message") or ""):
            ends = [e for a, e in caps[scope] if a <= t < e]
            if ends:
                nxt = min(ends)
        if nxt is None:
            continue
        wait = float(first["retry_after"])
        if told == "forecast" and first.get("backoff_ms") is not None:
            wait = float(first["backoff_ms"]) / 1000
        out.append(abs(nxt - t - wait))
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
        for x in exchanges_of(history, r["n"]):
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
    ra_header = retry_after_errors(history, "header")
    ra_next = retry_after_errors(history, reopen=False)
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
    csf_poll = cancel_slot_free(history)
    csf = cancel_slot_free_engine(history)
    csf_fault = cancel_slot_free_engine(history, exclude_faults=True)
    parts = cancel_parts(history)
    stalls = history.get("runner_stalls") or []
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
        # ORCH-6242: gated, from the engine's log (chaos_cancel.py says how)
        "cancel_slot_free_ms": _ms(csf.samples)
        | {
            "fallbacks": csf.fallbacks,
            "clock_slack_max": None if not csf.slack_s else round(1000 * max(csf.slack_s), 1),
            "engine_saw_cancel": _ms(csf.cancel_seen),
            "under_fault_n": len(csf_fault.samples),
            "under_fault_max": _ms(csf_fault.samples)["max"],
        },
        # ORCH-6250..6253: gated in two parts and a ceiling (chaos_cancel.cancel_gate)
        "cancel_parts_ms": {
            "ours": _ms(parts.ours),
            "ours_until_task_ended": _ms(parts.ended),
            "engine": _ms(parts.engine) | {"fallbacks": parts.fallbacks},
            "not_closed_by_us": parts.not_closed,
            "engine_missed_cancel": parts.engine_missed_cancel,
            "ours_across_runner_stall": parts.across_stall,
        },
        "runner_stalls": {
            "n": len(stalls),
            "max_ms": None if not stalls else round(1000 * max(d for _, d in stalls), 1),
            "total_ms": round(1000 * sum(d for _, d in stalls), 1),
        },
        # reported, not gated: the first /slots answer showing the slot free
        "cancel_slot_free_poll_ms": _ms(csf_poll),
        "cancel_upstream_closed_ms": {
            "n": len(cuc),
            "p50": None if not cuc else round(1000 * (_pct(cuc, 50) or 0), 1),
            "p99": None if not cuc else round(1000 * (_pct(cuc, 99) or 0), 1),
        },
        "token_gap_ms": {
            "p50": None if not gaps else round(1000 * (_pct(gaps, 50) or 0), 1),
            "p99": None if not gaps else round(1000 * (_pct(gaps, 99) or 0), 1),
        },
        # ORCH-6106, ORCH-6268: gated, on the forecast in ms; the header's, reported
        "retry_after_error_s": {"n": len(ra), "p50": _pct(ra, 50), "p90": _pct(ra, 90)},
        "retry_after_header_error_s": {
            "n": len(ra_header),
            "p50": _pct(ra_header, 50),
            "p90": _pct(ra_header, 90),
        },
        # ORCH-6269: reported, not gated: every refusal to its scope's next 202
        "retry_after_next_admit_error_s": {
            "n": len(ra_next),
            "p50": _pct(ra_next, 50),
            "p90": _pct(ra_next, 90),
        },
        "retry_after_client_error_s": {"n": len(rc), "p50": _pct(rc, 50), "p90": _pct(rc, 90)},
        "cancel_answers": dict(sorted(cancels.items())),
        "recovery": rec,
        "engine_kill_to_worker_reset_s_max": max(kill_reset) if kill_reset else None,
        "fairness": fairness(history),
        "store_faults": store_figures(history),
        "pool_faults": store_figures(history, POOL_FAULTS),
    }
