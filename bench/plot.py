"""Draw one bench result as a PNG (run in the tools venv, which has matplotlib).

``python plot.py RESULT.json OUT.png``
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SERIES = (
    ("direct", "direct /completion", "k"),
    ("orch", "llama-orch", "tab:blue"),
    ("direct_openai", "direct OpenAI route", "tab:gray"),
    ("litellm", "LiteLLM", "tab:red"),
)


def main(src: str, dst: str) -> None:
    res = json.load(open(src))
    rows = res.get("fake", [])
    delays = sorted({r["delay_ms"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(len(delays), 3, figsize=(15, 4.2 * len(delays)), squeeze=False)
    for row_axes, delay in zip(axes, delays, strict=True):
        rs = [r for r in rows if r["delay_ms"] == delay]
        cs = [r["c"] for r in rs]
        ax_t, ax_r, ax_c = row_axes
        for key, label, color in SERIES:
            if not all(key in r for r in rs):
                continue
            p50 = [r[key]["ttft_ms"]["50"] for r in rs]
            p99 = [r[key]["ttft_ms"]["99"] for r in rs]
            ax_t.plot(cs, p50, "o-", color=color, label=f"{label} p50")
            ax_t.plot(cs, p99, "x--", color=color, alpha=0.6, label=f"{label} p99")
            ax_r.plot(cs, [r[key]["req_per_s"] for r in rs], "o-", color=color, label=label)
        for key, who, label, color in (
            ("orch", "orch", "llama-orch", "tab:blue"),
            ("litellm", "litellm", "LiteLLM", "tab:red"),
        ):
            if all(key in r for r in rs):
                ax_c.plot(
                    cs,
                    [r[key]["cpu_s"][who] * 1000 / max(1, r[key]["ok"]) for r in rs],
                    "o-",
                    color=color,
                    label=label,
                )
        for ax, title, ylabel in (
            (ax_t, "TTFT", "ms (log)"),
            (ax_r, "streamed requests/s (32 tokens)", "req/s (log)"),
            (ax_c, "server CPU per request", "ms (log)"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(cs, [str(c) for c in cs])
            ax.set_xlabel("concurrent streams")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title} — fake engine {delay:g} ms/token")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(
        f"{res['command']}  ({res['machine']['nproc']} cores, {res['started']})", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
