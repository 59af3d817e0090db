# ruff: noqa: RUF001  (typographic signs are meant: this file writes Markdown for people)
"""Write a chaos run's report: Markdown, JSON (figures), SVG plot, gzipped history.

The plot is a hand-drawn SVG (tasks in flight and tokens per second over
time, faults shaded, rejections and failures marked), so the harness needs no
plotting library. A violation's section prints the task's whole history.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import chaos_cancel
import chaos_history


def write(
    base: Path,
    history: dict[str, Any],
    violations: list[chaos_history.Violation],
    figs: dict[str, Any],
) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(base.with_suffix(".history.json.gz"), "wt") as f:
        json.dump(history, f)
    summary = {
        "profile": history["profile"],
        "seed": history["seed"],
        "plan_digest": history["plan_digest"],
        "started": history["started"],
        "machine": history["machine"],
        "schedule": [
            {k: f[k] for k in ("n", "kind", "target", "planned_at_s", "at_s") if k in f}
            | {"duration_s": round(f.get("t_end", f["t_start"]) - f["t_start"], 3)}
            for f in history["faults"]
        ],
        "figures": figs,
        "violations": [v.to_json() for v in violations],
    }
    base.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    base.with_suffix(".svg").write_text(svg(history))
    base.with_suffix(".md").write_text(markdown(base, history, violations, figs))


def _fmt(x: Any) -> str:
    return "–" if x is None else str(x)


def _cancel_parts_rows(figs: dict[str, Any]) -> list[str]:
    """ORCH-6250..6253: the cancel figure in its two parts, and the gate's verdict."""
    cp = figs["cancel_parts_ms"]
    ours, ended, engine = cp["ours"], cp["ours_until_task_ended"], cp["engine"]
    st = figs["runner_stalls"]

    def three(d: dict[str, Any]) -> str:
        return f"{_fmt(d['p50'])} / {_fmt(d['p99'])} / {_fmt(d['max'])} ({d['n']})"

    fails = chaos_cancel.cancel_gate(figs)
    verdict = "pass" if not fails else "FAIL: " + "; ".join(fails)
    return [
        f"| **ours** (gated, ORCH-6251: p99 ≤ {chaos_cancel.OURS_P99_MS:g}): cancel → the "
        f"proxy saw orchestratord end the engine connection (ms) p50 / p99 / max (n); "
        f"ended otherwise or never: {cp['not_closed_by_us']} | {three(ours)} |",
        f"| of it: cancel → orchestratord's `task ended` line (ms resolution) (ms) p50 / "
        f"p99 / max (n) | {three(ended)} |",
        f"| the runner's loop stalls (> 50 ms; the clients, monitors and proxies stamp late "
        f"in one): n, max, total (ms); samples of ours across one | {st['n']}, "
        f"{_fmt(st['max_ms'])}, {st['total_ms']}; {cp['ours_across_runner_stall']} |",
        f"| **engine's** (gated, ORCH-6252: p99 ≤ {chaos_cancel.ENGINE_STEPS:g} × step p99 "
        f"+ {chaos_cancel.ENGINE_MARGIN_MS:g}): our close → the engine logged the slot's "
        f"release (ms) p50 / p99 / max (n; poll figures {engine['fallbacks']}; without the "
        f"engine's `cancel task` line {cp['engine_missed_cancel']}) | {three(engine)} |",
        f"| cancel gate (ORCH-6250..6253, the `ci` profile's; ceiling "
        f"{chaos_cancel.CEILING_MS:g} ms on any cancel) | {verdict} |",
    ]


def markdown(
    base: Path,
    history: dict[str, Any],
    violations: list[chaos_history.Violation],
    figs: dict[str, Any],
) -> str:
    plan = history["plan"]
    csf = figs["cancel_slot_free_ms"]
    csp = figs.get("cancel_slot_free_poll_ms") or {}
    rce = figs["retry_after_client_error_s"]
    cuc = figs["cancel_upstream_closed_ms"]
    w0, w1 = history["load_window"]
    L = [
        f"# Chaos run `{history['profile']}`, seed {history['seed']}",
        "",
        f"Started {history['started']} on {history['machine']['nproc']} cores; "
        f"load phase {w1 - w0:.0f} s, then drain. Plan digest `{history['plan_digest']}` "
        "(the same seed gives the same digest: same arrivals, same faults, same times).",
        "",
        f"Command: `uv run --frozen python test-harness/chaos/chaos_run.py --profile "
        f"{history['profile']} --seed {history['seed']}`",
        "",
        *(
            [
                f"Checked again from the recorded history on {history['rechecked']} "
                "(`chaos_run.py --recheck`), after a change of the checker.",
                "",
            ]
            if history.get("rechecked")
            else []
        ),
        "## Verdict",
        "",
        f"- lost: **{figs['lost']}** (must be 0)",
        f"- invariant violations: **{figs['violations']}** (must be 0) "
        f"{figs['violations_by_check'] or ''}",
        "",
        "## Load held",
        "",
        f"- arrivals {figs['arrivals']} ({sum(1 for a in plan['arrivals'] if a['burst'])} in "
        f"overload bursts), submissions {figs['submissions']}, accepted {figs['accepted']}",
        "- tenants (weight, quota): "
        + ", ".join(
            f"{t} ({w}, {history['quotas'].get(t, '–')})" for t, w in history["weights"].items()
        ),
        f"- tokens streamed to clients: {figs['tokens_streamed']} "
        f"({figs['tokens_streamed'] / max(1.0, w1 - w0):.1f}/s over the load phase)",
        "",
        "## Outcomes",
        "",
        "| accepted | completed | canceled | failed (by code) | rejected, never admitted | lost |",
        "|---:|---:|---:|---|---|---:|",
        f"| {figs['accepted']} | {figs['completed']} | {figs['canceled']} | "
        f"{figs['failed_by_code'] or '–'} | {figs['rejected_by_code'] or '–'} | {figs['lost']} |",
        "",
        "## Figures",
        "",
        "| figure | value |",
        "|---|---|",
        f"| cancel → engine slot free, from the engine's log (ms) p50 / p99 / max (n; of "
        f"which poll figures) | {_fmt(csf['p50'])} / {_fmt(csf['p99'])} / {_fmt(csf['max'])} "
        f"({csf['n']}; {_fmt(csf.get('fallbacks'))}) |",
        f"| same, cancels on an engine under a fault (±1 s), not counted above: max (n) | "
        f"{_fmt(csf.get('under_fault_max'))} ({csf.get('under_fault_n')}) |",
        f"| part of it: cancel → the engine logged the cancel (`stop: cancel task`; its HTTP "
        f"thread saw the closed connection) (ms) p50 / max (n) | "
        f"{_fmt(csf.get('engine_saw_cancel', {}).get('p50'))} / "
        f"{_fmt(csf.get('engine_saw_cancel', {}).get('max'))} "
        f"({_fmt(csf.get('engine_saw_cancel', {}).get('n'))}) |",
        f"| cancel → first `/slots` answer showing the slot free (ms) p50 / p99 / max (n), "
        f"reported, not gated | {_fmt(csp.get('p50'))} / {_fmt(csp.get('p99'))} / "
        f"{_fmt(csp.get('max'))} ({_fmt(csp.get('n'))}) |",
        f"| cancel → orchestratord closed the engine request (ms) p50 / p99 (n) | "
        f"{_fmt(cuc['p50'])} / {_fmt(cuc['p99'])} ({cuc['n']}) |",
        *_cancel_parts_rows(figs),
        f"| gap between two tokens of a task at the client (ms) p50 / p99: about one engine "
        f"step, the floor under cancel → slot free | {_fmt(figs['token_gap_ms']['p50'])} / "
        f"{_fmt(figs['token_gap_ms']['p99'])} |",
        f"| engine kill -9 → WORKER_RESET of its in-flight tasks, worst (s) | "
        f"{_fmt(figs['engine_kill_to_worker_reset_s_max'])} |",
        f"| Retry-After error: the forecast told in ms (`X-Backoff-Ms`, `retry-after-ms`) "
        f"vs the wait until the refusing limit admitted again (a `max_concurrent`: the "
        f"tenant's first task end, ORCH-6269) (s) p50 / p90 (n) | "
        f"{_fmt(figs['retry_after_error_s']['p50'])} / "
        f"{_fmt(figs['retry_after_error_s']['p90'])} ({figs['retry_after_error_s']['n']}) |",
        f"| same, against the `Retry-After` header (whole seconds, rounded up) (s) p50 / p90 | "
        f"{_fmt(figs['retry_after_header_error_s']['p50'])} / "
        f"{_fmt(figs['retry_after_header_error_s']['p90'])} |",
        f"| same, every refusal to its tenant's (quota) or anyone's next 202 (s) p50 / p90 | "
        f"{_fmt(figs.get('retry_after_next_admit_error_s', {}).get('p50'))} / "
        f"{_fmt(figs.get('retry_after_next_admit_error_s', {}).get('p90'))} |",
        f"| Retry-After vs that client's own wait to its 202 (s) p50 / p90 (n) | "
        f"{_fmt(rce['p50'])} / {_fmt(rce['p90'])} ({rce['n']}) |",
        f"| cancel answers (HTTP status: count) | {figs['cancel_answers']} |",
        f"| fairness deviation (dispatch share vs a reference deficit round robin, "
        f"backlogged tenants) | "
        f"{figs['fairness']['deviation']} over {figs['fairness']['samples']} dispatches; "
        f"observed {figs['fairness']['observed']}, expected {figs['fairness']['expected']} |",
        "",
        "How cancel → slot free is measured (ORCH-6242): the canceled request's engine task "
        "is found on `/slots` (the busy slot with its prompt length whose task appeared when "
        "the request reached the fault proxy). The gated figure is the time llama-server "
        "logged releasing that task's slot (`release: … stop processing`) minus the time the "
        "cancel was sent. The log counts from the engine's start; its offset to the runner's "
        "clock is, per engine incarnation, the largest consistent with every observation: "
        "no launch or release logged after the `/slots` answer that first showed it, nor "
        "before the send of the last poll that did not, no launch before the proxy saw its "
        "request, no line before the spawn. So a sample is never earlier than what was seen "
        f"(the offset interval is at most {_fmt(csf.get('clock_slack_max'))} ms wide here). "
        "Where the interval is empty or the log lacks the task's release, the sample is the "
        "poll figure (counted above). The poll figure, the first `/slots` answer (polled "
        "every 20 ms) showing the slot free, also carries the poll period and the runner's "
        "own delays when its event loop is busy.",
        "",
        "## Faults injected and recovery",
        "",
        "| # | kind | engine | at (s) | lasted (s) | in flight | their ends | detect (s) "
        "| serving again (s) |",
        "|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    rec = {r["n"]: r for r in figs["recovery"]}
    for f in history["faults"]:
        r = rec.get(f["n"], {})
        lasted = round(f.get("t_end", f["t_start"]) - f["t_start"], 2)
        if f["kind"] == "overload":
            L.append(
                f"| {f['n']} | overload (+{f.get('burst')}) | – | {f['at_s']} | {lasted} | – | "
                f"{r.get('rejected_429')} × 429 | – | backpressure {r.get('backpressure_s')} |"
            )
        else:
            L.append(
                f"| {f['n']} | {f['kind']} | {f['target']} | {f['at_s']} | {lasted} | "
                f"{r.get('in_flight')} | {', '.join(r.get('codes', [])) or '–'} | "
                f"{_fmt(r.get('detect_s'))} | {_fmt(r.get('recovery_s'))} |"
            )
    L += [
        "",
        "detect: fault → the last of the target's in-flight tasks ended with an error; "
        "serving again: fault → first `started` on the target after the fault ended.",
        "",
    ]
    if figs.get("pool_faults"):
        L += [
            "## pool-managerd faults",
            "",
            "| # | kind | outage (s) | submits during | answers | streaming at the fault → "
            "outcome | breakers open after (s), engine kills | pool unready at orchestratord "
            "| Ready again after restart / reset (s) |",
            "|---:|---|---:|---:|---|---|---|---|---:|",
        ]
        for r in figs["pool_faults"]:
            again = r.get("ready_after_start_s") or r.get("ready_after_reset_s")
            L.append(
                f"| {r['n']} | {r['kind']} | {r['outage_s']} | {r['submits']} | {r['answers']} "
                f"| {r['in_flight']} → {r['in_flight_outcomes']} | "
                f"{_fmt(r.get('open_after_s'))}, {_fmt(r.get('kills'))} | "
                f"{_fmt(r.get('unready_seen'))} | {_fmt(again)} |"
            )
        L += [""]
    if figs.get("store_faults"):
        L += [
            "## Store and orchestratord faults",
            "",
            "| # | kind | outage (s) | submits during | answers | outage → first 503 (s) "
            "| longest answer (s) | back → first 202 (s) | streaming at the fault → outcome "
            "| resumed | orchestratord Ready after start (s) |",
            "|---:|---|---:|---:|---|---:|---:|---:|---|---:|---:|",
        ]
        for r in figs["store_faults"]:
            L.append(
                f"| {r['n']} | {r['kind']} | {r['outage_s']} | {r['submits']} | {r['answers']} "
                f"| {_fmt(r['first_503_s'])} | {r['max_answer_s']} | "
                f"{_fmt(r['first_202_after_s'])} | {r['in_flight']} → "
                f"{r['in_flight_outcomes']} | {r['resumed']} | "
                f"{_fmt(r['ready_after_start_s'])} |"
            )
        L += [
            "",
            "Submits during a store fault must be answered 202, 4xx or 503 + Retry-After "
            f"within {chaos_history.STORE_ANSWER_BOUND_S:g} s (`outage_answer`); an "
            "orchestratord kill -9 refuses connections until the restart (clients submit "
            "again); streams reconnect with `Last-Event-ID`.",
            "",
        ]
    L += [
        "",
        f"![timeline]({base.name}.svg)",
        "",
        f"Full history (every event of every task, proxy exchanges, `/slots` samples, daemon "
        f"task-end logs): `{base.name}.history.json.gz`.",
        "",
    ]
    if violations:
        L += ["## Violations", ""]
        tasks = {r["n"]: r for r in history["tasks"]}
        for v in violations[:50]:
            L += [f"### {v.check} — arrival {v.arrival}", "", v.detail, ""]
            if v.arrival is not None and v.arrival in tasks:
                xs = [x for x in history["exchanges"] or [] if x.get("arrival") == v.arrival]
                doc = {"task": tasks[v.arrival], "engine_exchanges": xs}
                L += ["```json", json.dumps(doc, indent=1)[:20000], "```", ""]
    return "\n".join(L)


def svg(history: dict[str, Any]) -> str:
    """Tasks in flight and streamed tokens/s per second of the run; faults shaded."""
    tasks = history["tasks"]
    t0 = history["load_window"][0]
    ends = [e[0] for r in tasks for e in r.get("events", [])] or [t0 + 1]
    t_end = max(max(ends), history["load_window"][1]) - t0
    nb = int(t_end) + 1
    inflight = [0] * nb
    tokens = [0] * nb
    rejected = [0] * nb
    failed = [0] * nb
    for r in tasks:
        if r.get("task_id"):
            a = int(r["t_accepted"] - t0)
            term = chaos_history.terminal_of(r)
            last = r["events"][-1][0] if r.get("events") else r["t_accepted"]
            for s in range(max(0, a), min(nb, int(last - t0) + 1)):
                inflight[s] += 1
            if term and term[0] == "error":
                failed[min(nb - 1, int(last - t0))] += 1
        for s in r.get("submits", []):
            if s["status"] in (429, 503):
                rejected[min(nb - 1, max(0, int(s["t_recv"] - t0)))] += 1
        for e in r.get("events", []):
            if e[2] == "token":
                tokens[min(nb - 1, max(0, int(e[0] - t0)))] += 1
    W, H, pad = 1000, 360, 45
    ymax = max(1, max(inflight), max(tokens) / 5, max(rejected))

    def x(t: float) -> float:
        return pad + (W - 2 * pad) * t / max(1, nb)

    def y(v: float) -> float:
        return H - pad - (H - 2 * pad) * v / ymax

    colors = {
        "engine_kill9": "#d62728",
        "engine_sigstop": "#9467bd",
        "net_blackhole": "#333333",
        "net_latency": "#8c564b",
        "net_reset": "#e377c2",
        "overload": "#ff7f0e",
    }
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
    ]
    for f in history["faults"]:
        a, b = f["t_start"] - t0, max(f.get("t_end", f["t_start"]) - t0, f["t_start"] - t0 + 0.5)
        c = colors.get(f["kind"], "#999")
        out.append(
            f'<rect x="{x(a):.1f}" y="{pad}" width="{max(2, x(b) - x(a)):.1f}" '
            f'height="{H - 2 * pad}" '
            f'fill="{c}" fill-opacity="0.18"><title>{f["kind"]} engine {f["target"]}</title></rect>'
        )
        out.append(f'<text x="{x(a):.1f}" y="{pad - 4}" fill="{c}">{f["kind"]}</text>')

    def line(vals: list[float], color: str, label: str, k: int) -> None:
        pts = " ".join(f"{x(i + 0.5):.1f},{y(v):.1f}" for i, v in enumerate(vals))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.3"/>')
        out.append(f'<text x="{W - 260}" y="{pad + 14 * k}" fill="{color}">{label}</text>')

    line(inflight, "#1f77b4", "tasks in flight (accepted, not ended)", 1)
    line([v / 5 for v in tokens], "#2ca02c", "tokens/s streamed ÷ 5", 2)
    line(rejected, "#ff7f0e", "429/503 answers per s", 3)
    line(failed, "#d62728", "tasks ended with an error per s", 4)
    out.append(f'<line x1="{pad}" y1="{H - pad}" x2="{W - pad}" y2="{H - pad}" stroke="black"/>')
    out.append(f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{H - pad}" stroke="black"/>')
    for k in range(0, nb + 1, max(1, nb // 10)):
        out.append(f'<text x="{x(k):.1f}" y="{H - pad + 14}" text-anchor="middle">{k}s</text>')
    for k in range(5):
        v = ymax * k / 4
        out.append(f'<text x="{pad - 4}" y="{y(v):.1f}" text-anchor="end">{v:.0f}</text>')
    out.append(
        f'<text x="{pad}" y="14">chaos {history["profile"]} seed {history["seed"]} — '
        f"{history['started']}</text>"
    )
    out.append("</svg>")
    return "\n".join(out)
