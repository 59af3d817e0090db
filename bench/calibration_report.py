"""The markdown report of a ``bench/calibration.py`` run (ORCH-1955): its summary as
tables, the command, the machine's load and the seed. Split out of ``calibration.py``
(which measures and analyses) by concept; no figure is computed here."""

from __future__ import annotations

from typing import Any

# per task: admission + 0, 10, ..., 90 % of its run (ORCH-2908); the run samples the
# held ETA at these instants and the report names their count
HELD_INSTANTS = 10


def _f(x: Any, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.0f} %" if pct else f"{x:.2f}"


def render(
    summary: dict[str, Any],
    cmd: str,
    started: str,
    took_s: float,
    load: tuple[float, float],
    seed: int = 19,
) -> str:
    s = summary
    lines = [
        f"# Calibration of predictions — {started}",
        "",
        f"Command: `{cmd}` ({took_s / 60:.1f} min). Real `llama-server` (SmolLM2-135M Q4_1,",
        "1 replica x 4 slots, 1 thread) behind orchestratord; 2-core machine, load average"
        f" {load[0]:.1f} at the start and {load[1]:.1f} at the end. Workload seed {seed};"
        " each client sends its own `Idempotency-Key` with every attempt (ORCH-1998).",
        "",
        f"Tasks: {s['tasks']}, admitted {s['admitted']}; refused {s['refused']};"
        f" end reasons {s['end_reasons']}; stream errors {s['errors']}.",
        "",
        "| prediction | n | median abs rel. error | p90 abs rel. error | within 2x"
        " | p90 of max(pred/actual, actual/pred) | median pred/actual | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, key, target in (  # the rows with a target: the forecast told at admission
        ("finish (all that ended)", "finish", "median <= 25 %, p90 factor <= 2"),
        ("finish (ran to max_tokens)", "finish_length_only", ""),
        ("finish: no other prompt admitted during its run", "finish_no_later_prompts", ""),
        ("finish: others' prompts admitted during its run", "finish_later_prompts", ""),
        (f"finish ETA held, {HELD_INSTANTS} instants a task (ORCH-2908)", "finish_held", ""),
        ("finish ETA held: no other prompt admitted", "finish_held_no_later_prompts", ""),
        ("finish ETA held: others' prompts admitted", "finish_held_later_prompts", ""),
        ("start (waited >= 100 ms)", "start", "median <= 25 %, p90 factor <= 2"),
        ("start: no task admitted later started first", "start_in_order", ""),
        ("start: overtaken by a task admitted later (EDF)", "start_overtaken", ""),
        (f"start ETA held, {HELD_INSTANTS} instants a wait (ORCH-2920)", "start_held", ""),
        ("start ETA held: overtaken", "start_held_overtaken", ""),
    ):
        e = s.get(key)
        if e is None:  # a report from before ORCH-2919
            continue
        lines.append(
            f"| {name} | {e['n']} | {_f(e['median_rel_err'], True)} | {_f(e['p90_rel_err'], True)}"
            f" | {_f(e['within_2x'], True)} | {_f(e.get('p90_factor'))}"
            f" | {_f(e['median_pred_over_actual'])} | {target} |"
        )
    r, t = s["retry"], s["on_time"]
    lines += [
        "",
        "The first five rows are the forecast told in the 202 at admission. The two split"
        " rows (ORCH-2902) separate the tasks during whose run (admission to end) other"
        " clients' prompts were admitted, which no forecast made at its admission can"
        " know, from the others; the targets apply to the first row. The `ETA held` rows"
        " (ORCH-2908) take, at admission + 0, 10, ..., 90 % of each task's actual"
        " duration, the finish its client then held (the 202's, or the latest"
        " `predicted_finish_ms` of a `queued` or `metrics` event, ORCH-2907) and compare"
        " the time it left with the time actually left (n = samples; a finish already"
        " passed counts as 1 ms left). The two start splits (ORCH-2919) separate the"
        " tasks that a task admitted after them overtook in the queue (a deadline is"
        " served first, ORCH-1111), which no start forecast made at admission can know;"
        " the `start ETA held` rows (ORCH-2920) take, at admission + 0, 10, ..., 90 % of"
        " its wait, the start the client then held (the 202's or the latest `queued`"
        " event's, ORCH-1961) against the time then left to its start.",
        "",
        f"Retry-After (X-Backoff-Ms): {r['n']} refused clients; first retry admitted"
        f" {_f(r['first_retry_admitted'], True)}; median actual wait / advertised"
        f" {_f(r['median_actual_over_advertised'])} (target: the median client is admitted"
        " at its first retry).",
        "",
        f"on_time_probability: {t['n']} tasks with a deadline; Brier score {_f(t['brier'])};"
        f" tasks given p >= 0.9: {t['p_ge_0.9_n']}, on time"
        f" {_f(t['p_ge_0.9_on_time'], True)} (target >= 85 %).",
        "",
        "| p bin | n | mean p | on time |",
        "|---|---|---|---|",
    ]
    for b in t["reliability"]:
        lines.append(f"| {b['bin']} | {b['n']} | {b['mean_p']:.2f} | {100 * b['on_time']:.0f} % |")
    return "\n".join(lines) + "\n"
