"""The placement bench's summary per policy and its Markdown report (ORCH-2340,
ORCH-2361, ORCH-2374).

Used by ``bench/prefix_placement.py``; split out of it (behaviour unchanged).
"""

from __future__ import annotations

import re
from typing import Any

# prefix-aware-replica: prefix-aware with `engine_slots: false`, the replica-level rule
# (ORCH-2359): what prefix-aware did on llama-server before ORCH-2371
POLICIES = ("round-robin", "least-loaded", "prefix-aware", "prefix-aware-replica")


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarise(recs: list[dict[str, Any]], wall_s: float, cache: dict[str, float]) -> dict[str, Any]:
    ttft = [r["ttft_ms"] for r in recs if "ttft_ms" in r]
    later = [r["ttft_ms"] for r in recs if "ttft_ms" in r and r["turn"] > 0]
    tokens = sum(r.get("tokens_out", 0) for r in recs)
    later_recs = [r for r in recs if r["turn"] > 0 and "ttft_ms" in r]
    engine = [r for r in later_recs if "prompt_n" in r]
    return {
        # where TTFT goes (turns 2+): orchestratord's queue (submit -> started), then the
        # engine (started -> first token); the engine's own count of the prompt tokens it
        # evaluated (not found in its slot or host cache) and its prompt eval time
        "queue_later_p50_ms": _pct([r["queue_ms"] for r in later_recs if "queue_ms" in r], 0.5),
        "engine_first_token_later_p50_ms": _pct(
            [r["ttft_ms"] - r["queue_ms"] for r in later_recs if "queue_ms" in r], 0.5
        ),
        "engine_matched": len(engine),
        "prompt_n_later_p50": _pct([float(r["prompt_n"]) for r in engine], 0.5),
        "prompt_n_later_mean": sum(r["prompt_n"] for r in engine) / max(1, len(engine)),
        "prompt_ms_later_p50": _pct([r["prompt_ms"] for r in engine], 0.5),
        # ORCH-2374: other slots' prompt tokens evaluated during the task's prompt window
        "others_prefill_later_p50": _pct(
            [r["others_prefill"] for r in engine if r.get("others_prefill") is not None], 0.5
        ),
        "others_prefill_later_mean": sum(r.get("others_prefill") or 0 for r in engine)
        / max(1, len(engine)),
        # the floor placement cannot go under: later turns that no other slot's prefill
        # delayed (their own new message and template, with the others' decoding)
        "ttft_later_alone_p50_ms": _pct(
            [r["ttft_ms"] for r in engine if (r.get("others_prefill") or 0) < 1], 0.5
        ),
        "later_alone": sum(1 for r in engine if (r.get("others_prefill") or 0) < 1),
        "tokens_in_later_mean": sum(r["tokens_in"] for r in later_recs if "tokens_in" in r)
        / max(1, len(later_recs)),
        "tokens_out_mean": tokens / max(1, len(recs)),
        "tasks": len(recs),
        # the engine's own count: a turn that evaluated at least half its prompt had
        # no slot holding its system prompt; a later turn that evaluated 150 tokens or
        # more, but less than half, lost its session's history (a new message and
        # the template are ~80)
        "cold_prefills": sum(
            1 for r in recs if "prompt_n" in r and r["prompt_n"] >= 0.5 * r["tokens_in"]
        ),
        "history_reevaluated": sum(
            1 for r in engine if 150 <= r["prompt_n"] < 0.5 * r["tokens_in"]
        ),
        "errors": sum(1 for r in recs if "error" in r),
        "ttft_p50_ms": _pct(ttft, 0.5),
        "ttft_p99_ms": _pct(ttft, 0.99),
        "ttft_later_turns_p50_ms": _pct(later, 0.5),
        "tokens_out": tokens,
        "wall_s": wall_s,
        "tokens_per_s": tokens / wall_s if wall_s else 0.0,
        "engine_cached_tokens": cache["cached"],
        "engine_evaluated_tokens": cache["evaluated"],
        "engine_cache_hit_ratio": cache["cached"] / max(1.0, cache["cached"] + cache["evaluated"]),
        "replica_switches": sum(
            1
            for r in recs
            for p in recs
            if p["tenant"] == r["tenant"]
            and p.get("session", 0) == r.get("session", 0)
            and p["turn"] == r["turn"] - 1
            and p.get("replica_id") != r.get("replica_id")
        ),
    }


def goals_met(x: dict[str, Any], rr: dict[str, Any], ll: dict[str, Any]) -> bool:
    """The issue's goals for a policy ``x``: TTFT p50 at least 2x lower than round-robin's
    and at least 20 % lower than least-loaded's, at equal or better output tokens/s."""
    return (
        rr["ttft_p50_ms"] >= 2 * x["ttft_p50_ms"]
        and x["ttft_p50_ms"] <= 0.8 * ll["ttft_p50_ms"]
        and x["tokens_per_s"] >= max(rr["tokens_per_s"], ll["tokens_per_s"])
    )


def render(res: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    policies = [p for p in POLICIES if p in res]
    rr, ll, pa = (res[p] for p in POLICIES[:3])
    sa = res.get("prefix-aware-replica")
    n_prompts = meta.get("prompts", 1)
    workload = (
        f"a shared system prompt of {meta['system_tokens']} tokens"
        if n_prompts == 1
        else f"{n_prompts} different system prompts of about {meta['system_tokens']} tokens "
        f"(tenant *i* uses prompt *i* mod {n_prompts})"
    )
    cache_ram = meta.get("cache_ram")
    cache = (
        "llama-server's default host prompt cache (`--cache-ram` 8192 MiB)"
        if cache_ram is None
        else f"host prompt cache `--cache-ram {cache_ram}` MiB"
        + (" (off: each replica caches only what its 4 slots hold)" if cache_ram == 0 else "")
    )
    lines = [
        f"# Prefix-aware placement on two real llama-server replicas ({meta['started']})",
        "",
        f"Command: `{meta['command']}` ({meta['took_s'] / 60:.1f} min). "
        f"Two `llama-server` replicas (SmolLM2-135M Q4_1, 4 slots x 2048 ctx, "
        f"{meta['threads']} thread each, build {meta['engine_version']}) behind one "
        f"orchestratord pool, {cache}; {meta.get('tenants', 8)} tenants (one key each; "
        + (
            f"{meta['sessions']} sessions each, one after the other, a think time apart"
            if meta.get("sessions", 1) > 1
            else "one session each"
        )
        + f"), {meta['turns']} turns per session, {workload} "
        + (
            "(the same for every policy; both engines restarted before each policy, so "
            "every policy starts with empty slots and pays its own cold prefills), "
            if meta.get("engines_restarted")
            else "(own nonce per policy, engines shared by the policies), "
        )
        + "user messages of "
        + (
            f"about {meta['user_tokens']} tokens"
            if meta.get("user_tokens", 0) > 0
            else "one short question (~10 tokens)"
        )
        + f", answers of at most {meta['max_tokens']} tokens (greedy), "
        + (
            f"the next turn after a think time (exponential, mean {meta['think_ms'] / 1000:.1f} s, "
            "the same per tenant for every policy), "
            if meta.get("think_ms")
            else "the next turn as soon as the answer ended, "
        )
        + "tenant *i* starting when tenant *i*-1 received its first token (its prompt is then "
        "in an engine's cache), then all conversing concurrently. prefix-aware: `learn: "
        f"{meta.get('learn', 'dispatch')}`, `imbalance_abs: {meta.get('imbalance_abs', 2)}`. "
        f"Machine: {meta['machine']}"
        + (f"; load avg {'/'.join(meta['uptime'])} at the start." if "uptime" in meta else "."),
        "",
        "| policy | tasks | TTFT p50 ms | TTFT p99 ms | TTFT p50 turns 2+ ms | output tok/s "
        "| engine prefix-cache hit ratio | replica switches within a session "
        "| cold prefills | histories re-evaluated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in policies:
        r = res[p]
        lines.append(
            f"| {p} | {r['tasks']} ({r['errors']} errors) | {r['ttft_p50_ms']:.0f} "
            f"| {r['ttft_p99_ms']:.0f} | {r['ttft_later_turns_p50_ms']:.0f} "
            f"| {r['tokens_per_s']:.2f} | {r['engine_cache_hit_ratio']:.3f} "
            f"| {r['replica_switches']} | {r.get('cold_prefills', '-')} "
            f"| {r.get('history_reevaluated', '-')} |"
        )
    lines += [
        "",
        "Ratios measured in this run:",
        "",
        f"- TTFT p50 round-robin / prefix-aware: **{rr['ttft_p50_ms'] / pa['ttft_p50_ms']:.2f}x** "
        "(goal >= 2x)",
        f"- TTFT p50 prefix-aware vs least-loaded: **"
        f"{(1 - pa['ttft_p50_ms'] / ll['ttft_p50_ms']) * 100:.0f} % lower** (goal >= 20 %)",
        "- output tokens/s prefix-aware / round-robin: "
        f"{pa['tokens_per_s'] / rr['tokens_per_s']:.2f}, / least-loaded: "
        f"{pa['tokens_per_s'] / ll['tokens_per_s']:.2f} (goal >= 1.0)",
    ]
    for name, x in (("prefix-aware", pa), ("prefix-aware-replica", sa)):
        if x is not None:
            lines.append(f"- **{name}: goals {'met' if goals_met(x, rr, ll) else 'not met'}**")
    if sa is not None:
        lines += [
            "- before/after, the replica-level rule (prefix-aware-replica) vs the slot "
            f"rules (prefix-aware): TTFT p50 {sa['ttft_p50_ms']:.0f} -> {pa['ttft_p50_ms']:.0f} "
            f"ms, p99 {sa['ttft_p99_ms']:.0f} -> {pa['ttft_p99_ms']:.0f} ms, output tok/s "
            f"{sa['tokens_per_s']:.2f} -> {pa['tokens_per_s']:.2f}",
            f"- TTFT p50 round-robin / prefix-aware-replica: "
            f"{rr['ttft_p50_ms'] / sa['ttft_p50_ms']:.2f}x",
        ]
    if any("queue_later_p50_ms" in res[p] for p in policies):
        lines += [
            "",
            "Where TTFT goes, turns 2+ (p50): orchestratord's queue wait (its `queue_time_ms`), "
            "the rest of the TTFT (dispatch to first token: mostly the engine), and the "
            "engine's own figures from its log: "
            "prompt tokens it evaluated (the rest came from its slot or host cache), the "
            "prompt tokens its other slots evaluated while the task's prompt was in flight "
            "(ORCH-2374: on one thread the task waits for them) and the prompt-eval time:",
            "",
            "| policy | prompt tokens (mean) | queue ms | dispatch to first token ms "
            "| evaluated tokens p50 (mean) | others' prefill in its window p50 (mean) "
            "| prompt eval ms p50 | matched | output tokens/task "
            "| TTFT p50 of turns no other prefill delayed (n) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in policies:
            r = res[p]
            lines.append(
                f"| {p} | {r['tokens_in_later_mean']:.0f} | {r['queue_later_p50_ms']:.0f} "
                f"| {r['engine_first_token_later_p50_ms']:.0f} | {r['prompt_n_later_p50']:.0f} "
                f"({r['prompt_n_later_mean']:.0f}) "
                f"| {r.get('others_prefill_later_p50', float('nan')):.0f} "
                f"({r.get('others_prefill_later_mean', float('nan')):.0f}) "
                f"| {r['prompt_ms_later_p50']:.0f} "
                f"| {r['engine_matched']} | {r['tokens_out_mean']:.0f} "
                f"| {r.get('ttft_later_alone_p50_ms', float('nan')):.0f} "
                f"({r.get('later_alone', '-')}) |"
            )
    lines += [
        "",
        "TTFT is submit (POST /v1/tasks) to the first `token` event at the client, queue "
        "wait included. The engine hit ratio is the engines' own count of prompt tokens "
        "taken from their cache over all prompt tokens of the policy's requests.",
        "",
        "orchestratord's placement decisions per policy (`placement_decisions_total`):",
        "",
    ]
    for p in policies:
        counts = []
        for line in res[p].get("orchestrator_series", []):
            m = re.match(r'placement_decisions_total\{.*decision="(\w+)".*\} ([0-9.]+)', line)
            if m:
                counts.append(f"{m.group(1)} {float(m.group(2)):.0f}")
        lines.append(f"- {p}: {', '.join(counts) or 'not read'}")
    return "\n".join(lines) + "\n"
