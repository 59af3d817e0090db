"""Cancel -> engine slot free, the figure ORCH-6106 bounds, measured two ways (ORCH-6242).

The poll figure: from the cancel to the first ``/slots`` answer showing the request's
slot free. It carries the poll period (20 ms) and the poll's own latency, and when the
runner's event loop is starved the answer is read late: the runner, not the engine, adds
to it (a CI run at load 3.4 had a 259 ms sample whose previous poll was 217 ms earlier).

The engine-log figure (gated): from the cancel to the moment llama-server logged the
release of the request's task (``release: id N | task T | stop processing``). The log
counts from the engine's start; its offset to the runner's clock is fitted per engine
incarnation to what the run saw (runner time = log time + offset):

- no line before the engine was spawned: offset >= t_spawn; and the engine
  answered its health check after logging its start: offset <= t_ready;
- a task's launch or release is logged before the ``/slots`` answer that first showed
  it (``t``): offset <= t - logged time;
- ... and after the send of the last poll that did not show it yet (``t_sent``; the
  engine answers ``/slots`` from the loop that launches and releases): offset >=
  t_sent - logged time;
- a request's launch comes after the fault proxy saw it (the exchange's ``opened``, for
  the requests the ``/slots`` match tied to a task): offset >= opened - launch.

The offset taken is the upper end of that interval: the latest release times consistent
with what was seen. A cancel whose incarnation has an empty interval, or whose task has
no release line, falls back to its poll figure, and the fallbacks are counted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from chaos_history import cancel_of, exchanges_of

# `--log-timestamps --log-prefix`: "M.SS.mmm.uuu L " before each line (minutes, seconds,
# milliseconds, microseconds since the log started), then llama-server's slot lines.
_TS = r"^(\d+)\.(\d+)\.(\d+)\.(\d+) "
_SLOT_LINE = re.compile(_TS + r".*\bid +(\d+) \| task (\d+) \| (processing task|stop processing)")
_CANCEL_LINE = re.compile(_TS + r".*\bcancel task, id_task = (\d+)")


def _seconds(groups: tuple[str | Any, ...]) -> float:
    mins, secs, ms, us = (int(g) for g in groups[:4])
    return mins * 60 + secs + ms / 1e3 + us / 1e6


def parse_engine_log(text: str) -> dict[str, dict[str, float]]:
    """Per task id (a string: history keys are JSON): its slot and, in seconds of the
    log's clock, when the engine launched it, saw its cancel and released its slot."""
    tasks: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if m := _SLOT_LINE.match(line):
            task = tasks.setdefault(m.group(6), {})
            task["slot"] = int(m.group(5))
            key = "launch" if m.group(7) == "processing task" else "release"
            task[key] = _seconds(m.groups())
        elif m := _CANCEL_LINE.match(line):
            tasks.setdefault(m.group(5), {})["cancel"] = _seconds(m.groups())
    return tasks


def _under_fault(history: dict[str, Any], engine: int, t: float) -> bool:
    """An engine fault (not overload) on ``engine`` was active around ``t`` (±1 s):
    a stopped, cut or slowed engine cannot free a slot on time by construction."""
    for f in history.get("faults", []):
        if f["kind"] == "overload" or f.get("target") != engine:
            continue
        if f["t_start"] - 1.0 <= t <= (f.get("t_end") or f["t_start"]) + 1.0:
            return True
    return False


def cancel_matches(history: dict[str, Any]) -> list[dict[str, Any]]:
    """Cancels of a request the engine was running (its exchange open, not final, at the
    cancel) tied to the engine task running it: ``engine``, ``t_cancel``, ``opened``,
    ``id_task``, ``under_fault`` and ``t_seen_free`` (the first /slots answer after the
    cancel showing the slot free, None if none did)."""
    samples: dict[str, list[dict[str, Any]]] = history.get("slot_samples", {})
    out: list[dict[str, Any]] = []
    for r in history["tasks"]:
        c = cancel_of(r)
        if not c or c.get("status") != 204:
            continue
        xs = [
            x
            for x in exchanges_of(history, r["n"])
            if x["opened"] < c["t_send"]
            and (x.get("closed") is None or x["closed"] > c["t_send"])
            and not x.get("final")
            and x.get("prompt_tokens") is not None
        ]
        if not xs:
            continue
        x = xs[-1]
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
                float(s["t"])
                for s in series
                if any(
                    q["id"] == slot["id"] and q["id_task"] == slot["id_task"] for q in s["slots"]
                )
            )

        # A slot whose task appeared before the request was opened runs another
        # request; during prefill /slots counts only the prompt tokens evaluated so far
        # (a CI run matched a neighbour's 56-token prompt to this 55-token request,
        # whose own slot showed 7, and reported that neighbour's end as 594 ms).
        # ORCH-6254: a slot the engine named (in its final chunk) for another request open at that
        # poll, whose task appeared after that request was opened, runs that request: a
        # CI run matched a 62-token request to a neighbour's 183-token prompt in prefill
        # (19 tokens so far) opened 4 ms before it, on the slot the neighbour's final
        # chunk named, and reported the neighbour's end as a cancel's 6.8 s.
        t_poll = before[-1]["t"]
        taken = [
            (y["id_slot"], y["opened"])
            for y in history.get("exchanges") or []
            if y is not x
            and y.get("engine") == x["engine"]
            and y.get("id_slot") is not None
            and y["opened"] <= t_poll
            and (y.get("closed") is None or y["closed"] >= t_poll)
        ]
        match = sorted(
            (abs(appeared(s) - x["opened"]), s["id"], s)
            for s in before[-1]["slots"]
            if s["is_processing"]
            and not any(s["id"] == k and appeared(s) >= t - 0.05 for k, t in taken)
            and s.get("prompt_len") is not None
            and s["prompt_len"] <= x["prompt_tokens"] + 1
            and (s["prompt_len"] >= x["prompt_tokens"] - 1 or s["prompt_len"] < x["prompt_tokens"])
            and appeared(s) >= x["opened"] - 0.05
        )
        if not match or match[0][0] > 1.0 or (len(match) > 1 and match[1][0] - match[0][0] < 0.1):
            continue
        slot0 = match[0][2]
        seen_free = None
        for s in series:
            if s["t"] <= c["t_send"]:
                continue
            slot = next((q for q in s["slots"] if q["id"] == slot0["id"]), None)
            if slot is None:
                break
            if not slot["is_processing"] or slot["id_task"] != slot0["id_task"]:
                seen_free = s["t"]
                break
        out.append(
            {
                "n": r["n"],
                "engine": x["engine"],
                "t_cancel": c["t_send"],
                "opened": x["opened"],
                "id_task": slot0["id_task"],
                "under_fault": _under_fault(history, x["engine"], c["t_send"]),
                "t_seen_free": seen_free,
            }
        )
    return out


def cancel_slot_free(history: dict[str, Any], *, exclude_faults: bool = False) -> list[float]:
    """The poll figure: seconds from a cancel to the first /slots answer showing the
    request's slot free (not busy, or running another task)."""
    return [
        m["t_seen_free"] - m["t_cancel"]
        for m in cancel_matches(history)
        if m["under_fault"] == exclude_faults and m["t_seen_free"] is not None
    ]


def incarnation(runs: list[dict[str, Any]], t: float) -> int | None:
    """Index of the engine incarnation running at ``t`` (the last spawned before it)."""
    k = None
    for i, run in enumerate(runs):
        if run["t_spawn"] <= t:
            k = i
    return k


def _offset_bounds(
    runs: list[dict[str, Any]],
    k: int,
    series: list[dict[str, Any]],
    anchors: list[tuple[int, float]],
) -> tuple[float, float]:
    """(lo, hi) of incarnation ``k``'s log offset (see the module docstring); lo > hi
    when the observations contradict each other."""
    run = runs[k]
    t_next = runs[k + 1]["t_spawn"] if k + 1 < len(runs) else math.inf
    lo, hi = float(run["t_spawn"]), float(run.get("t_ready") or math.inf)
    # only the polls of this incarnation (sent after its spawn, before the next one)
    win = [s for s in series if run["t_spawn"] <= s.get("t_sent", s["t"]) < t_next]
    tasks: dict[str, dict[str, float]] = run["tasks"]
    shown: dict[str, list[int]] = {}
    for i, s in enumerate(win):
        for q in s["slots"]:
            if q["is_processing"] and q.get("id_task") is not None:
                shown.setdefault(str(q["id_task"]), []).append(i)
    for tid, idx in shown.items():
        task = tasks.get(tid)
        if task is None:
            continue
        first, last = idx[0], idx[-1]
        if "launch" in task:
            hi = min(hi, win[first]["t"] - task["launch"])
            if first > 0 and "t_sent" in win[first - 1]:
                lo = max(lo, win[first - 1]["t_sent"] - task["launch"])
        if "release" in task:
            if "t_sent" in win[last]:
                lo = max(lo, win[last]["t_sent"] - task["release"])
            if last + 1 < len(win):
                hi = min(hi, win[last + 1]["t"] - task["release"])
    for tid_int, opened in anchors:
        task = tasks.get(str(tid_int))
        if task is not None and "launch" in task:
            lo = max(lo, opened - task["launch"])
    return lo, hi


def clock_offsets(
    history: dict[str, Any], matches: list[dict[str, Any]] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Per engine, per incarnation: the (lo, hi) interval of its log clock's offset."""
    if matches is None:
        matches = cancel_matches(history)
    samples: dict[str, list[dict[str, Any]]] = history.get("slot_samples", {})
    out: dict[str, list[tuple[float, float]]] = {}
    for engine, runs in (history.get("engine_logs") or {}).items():
        out[engine] = []
        for k in range(len(runs)):
            anchors = [
                (m["id_task"], m["opened"])
                for m in matches
                if str(m["engine"]) == engine and incarnation(runs, m["t_cancel"]) == k
            ]
            out[engine].append(_offset_bounds(runs, k, samples.get(engine, []), anchors))
    return out


@dataclass
class EngineLogFigure:
    samples: list[float] = field(default_factory=list)  # seconds, cancel -> slot released
    fallbacks: int = 0  # samples that are poll figures (no offset, or no release line)
    slack_s: list[float] = field(default_factory=list)  # hi - lo of each log sample's offset
    # seconds from the cancel to the engine's HTTP thread logging it ("cancel task"): the
    # part of a sample before the engine loop had the cancel to act on
    cancel_seen: list[float] = field(default_factory=list)


def cancel_slot_free_engine(
    history: dict[str, Any], *, exclude_faults: bool = False
) -> EngineLogFigure:
    """The engine-log figure (ORCH-6242): seconds from a cancel to the release of its
    task's slot as the engine logged it, on the runner's clock at the latest offset
    consistent with the run's observations; the poll figure where that is not known."""
    matches = cancel_matches(history)
    offsets = clock_offsets(history, matches)
    logs: dict[str, list[dict[str, Any]]] = history.get("engine_logs") or {}
    fig = EngineLogFigure()
    for m in matches:
        if m["under_fault"] != exclude_faults:
            continue
        runs = logs.get(str(m["engine"]), [])
        k = incarnation(runs, m["t_cancel"])
        release = None if k is None else runs[k]["tasks"].get(str(m["id_task"]), {}).get("release")
        if k is not None and release is not None:
            lo, hi = offsets[str(m["engine"])][k]
            if lo <= hi < math.inf:
                # 0 when the engine released the slot before the cancel was sent (its
                # request ended then; the last poll before the cancel showed it busy)
                fig.samples.append(max(0.0, release + hi - m["t_cancel"]))
                fig.slack_s.append(hi - lo)
                seen = runs[k]["tasks"][str(m["id_task"])].get("cancel")
                if seen is not None:
                    fig.cancel_seen.append(max(0.0, seen + hi - m["t_cancel"]))
                continue
        if m["t_seen_free"] is not None:
            fig.samples.append(m["t_seen_free"] - m["t_cancel"])
            fig.fallbacks += 1
    return fig


# ORCH-6250..6253: the gate on a cancel, in two parts measured in the same run, and a
# ceiling on the whole. Our part ends when the fault proxy sees orchestratord end the
# engine connection; the engine's part is from there to its slot's release, which
# llama-server cannot make shorter than it is built to: its HTTP thread notices the
# closed connection when it next writes a token of that request (up to one step) and
# posts a cancel that its loop takes after the step in progress (up to one more).
OURS_P99_MS = 50.0  # ORCH-6251
ENGINE_STEPS = 2.0  # ORCH-6252: the engine's part, in measured engine steps ...
ENGINE_MARGIN_MS = 50.0  # ... plus this (the log offset's slack, the 2 cores' scheduling)
CEILING_MS = 2000.0  # ORCH-6253: any cancel, cancel -> slot released


@dataclass
class CancelParts:
    """ORCH-6250: one cancel's time cut where orchestratord hands it to the engine."""

    ours: list[float] = field(default_factory=list)  # cancel -> engine connection ended
    # the first piece of ``ours``, reported: cancel -> orchestratord logged the task's
    # end (its "task ended" line, ms resolution); the rest is the adapter's close
    ended: list[float] = field(default_factory=list)
    # our close -> slot released (engine log, or the poll figure where it falls back)
    engine: list[float] = field(default_factory=list)
    fallbacks: int = 0  # engine samples that are poll figures
    # exchanges that ended after the cancel other than by our close (the engine's end,
    # a proxy cut) or never: their ``ours`` sample is how long they stayed open (inf)
    not_closed: int = 0
    # matched tasks whose cancel the engine never logged though we closed first: either
    # the engine missed the close or the match is wrong (the 6.8 s sample was the latter)
    engine_missed_cancel: int = 0
    # ``ours`` samples whose span (cancel -> close seen) overlaps a stall of the runner's
    # loop (ORCH-6255): the proxy, in that loop, saw the close late by up to the stall
    across_stall: int = 0


def _open_at_cancel(history: dict[str, Any], r: dict[str, Any], t: float) -> dict[str, Any] | None:
    """The engine exchange of ``r`` running at ``t``: opened, not ended and no final chunk
    by then (a history without the final chunk's time: none at all). A request we kept
    open after the cancel runs to its final chunk, and its time open is ours."""

    def running(x: dict[str, Any]) -> bool:
        if x.get("t_final") is not None:
            return bool(x["t_final"] > t)
        return not x.get("final")

    xs = [
        x
        for x in exchanges_of(history, r["n"])
        if x["opened"] < t and (x.get("closed") is None or x["closed"] > t) and running(x)
    ]
    return xs[-1] if xs else None


def cancel_parts(history: dict[str, Any]) -> CancelParts:
    """ORCH-6250: our part of every answered cancel whose engine request was running,
    and the engine's part of those the /slots match ties to an engine task, both off
    engine faults (±1 s)."""
    out = CancelParts()
    ends = {
        d.get("job_id"): float(d["ts"])
        for d in history.get("daemon_task_ends") or []
        if d.get("state") == "canceled" and "ts" in d
    }
    for r in history["tasks"]:
        c = cancel_of(r)
        if not c or c.get("status") != 204:
            continue
        x = _open_at_cancel(history, r, c["t_send"])
        if x is None or _under_fault(history, x["engine"], c["t_send"]):
            continue
        closed = x.get("closed")
        if closed is None or x.get("cut") != "client-eof":
            out.not_closed += 1
        out.ours.append(math.inf if closed is None else closed - c["t_send"])
        end = math.inf if closed is None else closed
        if any(t < end and t + d > c["t_send"] for t, d in history.get("runner_stalls") or []):
            out.across_stall += 1
        if r.get("task_id") in ends:
            out.ended.append(max(0.0, ends[r["task_id"]] - c["t_send"]))
    matches = cancel_matches(history)
    offsets = clock_offsets(history, matches)
    logs: dict[str, list[dict[str, Any]]] = history.get("engine_logs") or {}
    by_n = {r["n"]: r for r in history["tasks"]}
    for m in matches:
        if m["under_fault"]:
            continue
        x = _open_at_cancel(history, by_n[m["n"]], m["t_cancel"])
        if x is None or x.get("closed") is None or x.get("cut") != "client-eof":
            continue  # not closed by us: counted in ``not_closed``
        closed = float(x["closed"])
        runs = logs.get(str(m["engine"]), [])
        k = incarnation(runs, m["t_cancel"])
        task: dict[str, float] = {}
        lo, hi = math.inf, math.inf  # no offset known
        if k is not None:
            task = runs[k]["tasks"].get(str(m["id_task"]), {})
            lo, hi = offsets[str(m["engine"])][k]
        if "release" in task and lo <= hi < math.inf:
            released = task["release"] + hi
            out.engine.append(max(0.0, released - closed))
            if "cancel" not in task and released > closed:
                out.engine_missed_cancel += 1
        elif m["t_seen_free"] is not None:
            out.engine.append(max(0.0, m["t_seen_free"] - closed))
            out.fallbacks += 1
    return out


def cancel_gate(figs: dict[str, Any], *, min_n: int = 3) -> list[str]:
    """ORCH-6250..6253 on a run's figures: what fails (empty when the gate passes)."""
    fails: list[str] = []
    ours, engine = figs["cancel_parts_ms"]["ours"], figs["cancel_parts_ms"]["engine"]
    step = figs["token_gap_ms"]["p99"]
    if ours["n"] < min_n or engine["n"] < min_n:
        fails.append(f"too few cancels measured: ours {ours['n']}, engine {engine['n']}")
    if ours["n"] and ours["p99"] > OURS_P99_MS:
        fails.append(f"ours: cancel -> engine connection ended p99 {ours['p99']} > {OURS_P99_MS}")
    if step is None:
        fails.append("no engine step measured (no two tokens of one task)")
    elif engine["n"] and engine["p99"] > ENGINE_STEPS * step + ENGINE_MARGIN_MS:
        fails.append(
            f"engine: our close -> slot released p99 {engine['p99']} ms > {ENGINE_STEPS:g} x "
            f"step p99 {step} + {ENGINE_MARGIN_MS:g} ms"
        )
    worst = [v for v in (figs["cancel_slot_free_ms"]["max"], ours["max"]) if v is not None]
    if worst and max(worst) > CEILING_MS:
        fails.append(f"ceiling: a cancel took {max(worst)} ms > {CEILING_MS:g} ms")
    return fails
