# ruff: noqa: RUF001  (typographic signs are meant: this file writes Markdown for people)
"""Figures of one ``bench/run.py`` result and their fall-back against a baseline (ORCH-2702).

``figures(result)`` names every figure the bench reports that has a direction
(lower CPU per request is better, higher requests/s is better, ...);
``compare(baseline, result)`` lists those present in both whose value fell back
by more than ``TOLERANCE`` (25 %). ``bench/run.py`` reads the newest results
file committed under ``bench/results/`` as the baseline (``--baseline`` to
choose another), prints the comparison in its table and exits 3 when any
figure fell back, so a regression cannot land unseen.

Requests/s compare as the ratio to the direct path measured in the same run
(absolute rates follow how much CPU the shared machine lent the run), CPU as
time per request or token (robust to load), memory as KB per task or stream,
errors as a count (any error where the baseline had none is a fall-back: the
429s of issue #20 were exactly that).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

TOLERANCE = 0.25
HERE = Path(__file__).resolve().parent

Figure = tuple[float, str]  # value, "lower" | "higher" is better


def _cpu_ms(r: dict[str, Any], who: str) -> float | None:
    if not r.get("ok") or who not in r.get("cpu_s", {}):
        return None
    return float(r["cpu_s"][who]) * 1000 / r["ok"]


def _cpu_us_tok(r: dict[str, Any], who: str) -> float | None:
    if not r.get("tokens") or who not in r.get("cpu_s", {}):
        return None
    return float(r["cpu_s"][who]) * 1e6 / r["tokens"]


def _slopes(rss: list[dict[str, int]], counts: list[int], who: str) -> list[float]:
    return [
        (rss[i + 1][who] - rss[i][who]) / (counts[i + 1] - counts[i])
        for i in range(len(rss) - 1)
        if counts[i + 1] > counts[i]
    ]


def memory_slope(r: dict[str, Any], who: str = "orch") -> tuple[float, list[float]] | None:
    """KB per queued task (``admit``) or open stream (``hold``) and the per-batch slopes
    behind it: with batches (``--steps``), the median of the RSS slopes between batches
    (the first batch warms the process and is not a slope's start); without, one
    peak against the start, as results before session 5 measured it."""
    steps = r.get("rss_steps_kb")
    counts = r.get("ok_steps") or r.get("streams_steps")
    if steps and counts and len(steps) > 1:
        sl = sorted(_slopes(steps, counts, who))
        if sl:
            mid = len(sl) // 2
            med = sl[mid] if len(sl) % 2 else (sl[mid - 1] + sl[mid]) / 2
            return med, sl
    if "rss_during_kb" in r and r.get("streams"):
        return (r["rss_during_kb"][who] - r["rss_before_kb"][who]) / r["streams"], []
    if r.get("ok") and "rss_peak_kb" in r:
        return (r["rss_peak_kb"][who] - r["rss_start_kb"][who]) / r["ok"], []
    return None


def figures(res: dict[str, Any]) -> dict[str, Figure]:
    out: dict[str, Figure] = {}

    def put(name: str, value: float | None, better: str) -> None:
        if value is not None:
            out[name] = (float(value), better)

    for row in res.get("fake", []):
        tag = f"{row['delay_ms']:g}ms c={row['c']}"
        d = row["direct"]
        for side in ("orch", "orch_stream", "orch_openai"):
            o = row.get(side)
            if o is None:
                continue
            name = f"{tag} {side}"
            put(f"{name} CPU ms/req", _cpu_ms(o, "orch"), "lower")
            put(f"{name} CPU µs/token", _cpu_us_tok(o, "orch"), "lower")
            if d.get("req_per_s"):
                put(f"{name} req/s vs direct", o["req_per_s"] / d["req_per_s"], "higher")
            put(f"{name} errors", o["errors"] + o.get("short_streams", 0), "errors")
    for row in res.get("native", []):  # wrk: relayed / direct requests/s (issue #20)
        d, o = row["direct"], row["orch_stream"]
        if d.get("req_per_s"):
            put(f"wrk c={row['c']} req/s vs direct", o["req_per_s"] / d["req_per_s"], "higher")
    cs = res.get("cpu_split", {})
    for side in ("orch", "orch_stream", "orch_openai"):
        a, b = cs.get(f"{side}_1"), cs.get(f"{side}_128")
        if a and b:
            ca, cb = _cpu_ms(a, "orch"), _cpu_ms(b, "orch")
            if ca is not None and cb is not None:
                per_tok = (cb - ca) / 127.0
                put(f"cpu split {side} fixed ms/req", ca - per_tok, "lower")
                put(f"cpu split {side} µs/token", per_tok * 1000, "lower")
    mem = res.get("memory", {})
    a = mem.get("admit")
    if a and a.get("ok"):
        kb = memory_slope(a)
        put("KB per queued task", kb and kb[0], "lower")
        put("admission CPU ms", _cpu_ms(a, "orch"), "lower")
        put("admission errors", a["errors"], "errors")
    h = mem.get("hold")
    if h and h.get("rss_during_kb"):
        kb = memory_slope(h)
        put("KB per open stream", kb and kb[0], "lower")
    return out


def compare(
    base: dict[str, Any], new: dict[str, Any], tolerance: float = TOLERANCE
) -> list[dict[str, Any]]:
    """Every figure present in both, with its change and whether it fell back."""
    fb, fn = figures(base), figures(new)
    rows = []
    for name in sorted(fb.keys() & fn.keys()):
        (b, better), (n, _) = fb[name], fn[name]
        if better == "errors":
            worse = (n > 0 and b == 0) or (b > 0 and n > b * (1 + tolerance))
            change = None
        else:
            # KB figures can be near zero or negative (RSS noise): compare with a floor
            floor = 1.0 if name.startswith("KB") else 1e-9
            denom = max(abs(b), floor)
            change = (n - b) / denom
            worse = change > tolerance if better == "lower" else change < -tolerance
        rows.append({"figure": name, "baseline": b, "now": n, "change": change, "worse": worse})
    return rows


def latest_committed(results_dir: Path = HERE / "results") -> Path | None:
    """The newest results JSON of ``bench/run.py`` committed under ``results_dir``."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--", "*.json"],
            cwd=results_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    for name in sorted(out, reverse=True):  # names start with the date and time
        path = results_dir / name
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and "machine" in doc and figures(doc):
            return path
    return None


def markdown(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    worse = [r for r in rows if r["worse"]]
    lines = [
        "## Against the last committed result",
        "",
        f"Baseline: `{baseline}`. A figure **fell back** when it is more than "
        f"{TOLERANCE * 100:.0f} % worse than there (errors: any where there were none); "
        f"`bench/run.py` then exits 3. {len(worse)} of {len(rows)} shared figures fell back.",
        "",
        "| figure | baseline | now | change | |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ch = "–" if r["change"] is None else f"{r['change'] * 100:+.0f} %"
        flag = "**FELL BACK**" if r["worse"] else ""
        lines.append(f"| {r['figure']} | {r['baseline']:.3g} | {r['now']:.3g} | {ch} | {flag} |")
    lines.append("")
    return lines
