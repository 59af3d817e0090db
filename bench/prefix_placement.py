"""Cache-aware placement on two real llama-server replicas (issue #17 part 2, ORCH-2340, 2359,
ORCH-2360, 2361, 2363, 2367, 2368).

Multi-turn chat sessions of 8 tenants (one API key each; ``--sessions`` sessions
per tenant one after the other, default 2) share a system prompt of about 1,000
tokens. The same workload runs once per placement policy, ``round-robin``,
``least-loaded``, ``prefix-aware`` (on llama-server: the slot rules, ORCH-2371) and
``prefix-aware-replica`` (the replica-level rule, ``engine_slots: false``), in one run, and the
table reports per policy the client-measured TTFT (submit to first token,
p50/p99), output tokens/s over the policy's wall time,
and the engines' own prefix-cache hit ratio over that policy's requests (from
``llamacpp:prompt_tokens_cached_total`` / ``prompt_tokens_total``).

Fairness between the policies (ORCH-2367): orchestratord and both engines are
restarted for each policy (an empty prefix index, every slot empty, no host
cache), and every policy gets the same system prompt, messages and think times,
so each pays its own cold prefills and none inherits another's cache. Tenants
start one after the other (tenant *i* when tenant *i*-1 got its first token,
so the shared prompt is in an engine's cache), then converse concurrently,
each sending its next turn a think time after the previous answer ended
(``--think-ms``, default mean 5 s); answers are greedy. The turns are realistic
chat (ORCH-2360): user messages of ~60 tokens, answers of up to 128 tokens, so
a replica that does not hold a session's history re-evaluates ~200-600 tokens
of it. The report also says where TTFT goes (ORCH-2361): orchestratord's queue
wait and the prompt tokens each engine evaluated per task (from its own log).

    uv run --frozen python bench/prefix_placement.py \
        --policies round-robin,least-loaded,prefix-aware    # the three of the issue
    # ~3-4 min per policy on 2 cores; --sessions 1: sessions 2-6's 32 turns a policy
    # sessions 2-5's turns: one short question, 16-token answers, no think time
    uv run --frozen python bench/prefix_placement.py --user-tokens 0 --max-tokens 16 \
        --think-ms 0 --imbalance-abs 1 --system-tokens 1149
    # ORCH-2359: several shared prompts, more than a replica's slots hold, and an
    # engine prompt cache no larger than its slots (as a GPU-sized model's would be)
    uv run --frozen python bench/prefix_placement.py --prompts 6 --cache-ram 0

Writes ``bench/results/<date>-prefix-placement.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_log import attach_engine_runs, attach_queue_times, engine_cache, engine_runs
from placement_report import POLICIES, render, summarise
from placement_workload import drive, system_prompt
from procs import BIN, HERE, LlamaServer, Procs, free_port, http_get, log, start_llama_server

MODEL = "pypi:smollm2-135m-instruct-q4_1"
ADMIN_KEY = f"llo_bench-admin-{'k' * 40}"  # reads /metrics


def start_orch(
    procs: Procs,
    tmp: Path,
    policy: str,
    engines: list[str],
    digest: str,
    version: str,
    imbalance_abs: int,
    tenants: int = 8,
    host_cache: bool = True,
) -> tuple[str, list[str], Any]:
    from llama_orch.orchestratord.auth import hash_key

    keys = [f"llo_bench-tenant{i}-{'k' * 40}" for i in range(tenants)]
    port = free_port()
    cfg = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_grace_s": 1.0},
        "auth": {
            "enabled": True,
            "keys": [
                {"id": f"t{i}", "role": "tenant", "tenant": f"tenant{i}", "hash": hash_key(k)}
                for i, k in enumerate(keys)
            ]
            + [{"id": "admin", "role": "admin", "hash": hash_key(ADMIN_KEY)}],
        },
        "admission": {"queue_capacity": 64},
        "observability": {"self_test": False, "engine_scrape_interval_s": 1.0},
        "allow_cpu_inference": True,
        "pools": [
            {
                "id": "bench",
                "engine": "llamacpp-http",
                "model": MODEL,
                "endpoints": engines,
                "ctx": 2048,
                "slots": 4,
                "model_digest": digest,
                "engine_version": version,
                # one engine thread: every extra running task slows the engine's
                # others, so the guard is tighter than for batching GPU engines
                "placement": {"policy": policy, "imbalance_abs": imbalance_abs}
                # the slot rules count the engine's host prompt cache only when it has one
                | ({"host_cache": host_cache} if policy == "prefix-aware" else {})
                # ORCH-2359: prefix-aware by the replica-level rule, as before ORCH-2371
                | (
                    {"policy": "prefix-aware", "engine_slots": False}
                    if policy == "prefix-aware-replica"
                    else {}
                ),
                # a cold 1,000-token prompt on a loaded 2-core machine takes minutes
                "adapter_options": {"idle_timeout_s": 900.0, "request_timeout_s": 900.0},
            }
        ],
    }
    path = tmp / f"orch-{policy}.json"
    path.write_text(json.dumps(cfg))
    p = procs.start(f"orch-{policy}", [str(BIN / "orchestratord"), "--config", str(path)])
    url = f"http://127.0.0.1:{port}"
    procs.wait_ready(
        p,
        url + "/v1/pools/bench/health",
        120,
        check=lambda b: sum(r["status"] == "ready" for r in json.loads(b)["replicas"]) == 2,
        headers={"Authorization": f"Bearer {keys[0]}"},
    )
    return url, keys, p


def count_tokens(engine: str, text: str) -> int:
    """The engine's own token count of ``text``."""
    import urllib.request

    req = urllib.request.Request(engine + "/tokenize", data=json.dumps({"content": text}).encode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        return len(json.loads(resp.read())["tokens"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=4)
    # Realistic chat turns (ORCH-2360): LMSYS-Chat-1M averages ~70 tokens per user
    # message and ~215 per answer; answers are capped at 128 here (1-thread CPU engines,
    # 2,048-token slots: 4 turns then fit). Sessions 2-5 used 16 and a bare question
    # (--max-tokens 16 --user-tokens 0).
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--user-tokens", type=int, default=60, help="per user message (0: bare)")
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=17)
    # the guard as a deployment runs it: the config default (sessions 2-5 passed 1)
    ap.add_argument("--imbalance-abs", type=int, default=2, help="prefix-aware's guard")
    ap.add_argument(
        "--think-ms", type=float, default=5000.0,
        help="mean time a user takes before the next turn (exponential, seeded; 0: none)",
    )  # fmt: skip
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument(
        "--sessions", type=int, default=2,
        help="sessions per tenant, one after the other (ORCH-2368; sessions 2-6 ran 1)",
    )  # fmt: skip
    ap.add_argument("--prompts", type=int, default=1, help="different system prompts (ORCH-2359)")
    ap.add_argument(
        "--cache-ram", type=int, default=None,
        help="llama-server --cache-ram MiB (default: the engine's 8192; 0 = off)",
    )  # fmt: skip
    ap.add_argument(
        "--policies", default=",".join(POLICIES), help="comma-separated subset, in this order"
    )
    ap.add_argument("--render", type=Path, help="re-render the report of a saved .json")
    args = ap.parse_args(argv)
    if args.render:
        doc = json.loads(args.render.read_text())
        print(render(doc["results"], doc["meta"]))
        return 0

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    uptime_start = Path("/proc/loadavg").read_text().split()[:3]
    stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
    tmp = Path(f"/tmp/llorch-prefix-{stamp}")
    tmp.mkdir(parents=True, exist_ok=True)
    procs = Procs(tmp)
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children in `finally`
    results: dict[str, dict[str, Any]] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    system_tokens = 0
    servers: list[LlamaServer] = []
    try:

        def start_engines(tag: str) -> list[LlamaServer]:
            for i in range(2):
                (tmp / f"slots-{i}-{tag}").mkdir(exist_ok=True)
            return [
                start_llama_server(
                    procs,
                    f"llama-server-{i}-{tag}",
                    model=MODEL,
                    threads=args.threads,
                    # this build's repacking dies with SIGILL here; 64-token batches so
                    # that progress chunks flow during a long prefill (ORCH-3028)
                    extra_flags=("--no-repack", "-b", "64", "-ub", "64")
                    + (() if args.cache_ram is None else ("--cache-ram", str(args.cache_ram))),
                    # every policy's engines alike: only the slot rules copy (ORCH-2369)
                    slot_save_path=tmp / f"slots-{i}-{tag}",
                )
                for i in range(2)
            ]

        # ORCH-2367: one workload for every policy (the same system prompt, messages
        # and think times), and fresh engines for each (every slot empty, no host cache)
        nonce = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10))
        systems = [system_prompt(f"{nonce}-{k}", args.system_tokens) for k in range(args.prompts)]
        for policy in [p for p in POLICIES if p in args.policies.split(",")]:
            servers = start_engines(policy)
            engines = [s.url for s in servers]
            if not system_tokens:
                system_tokens = count_tokens(engines[0], systems[0])
                log(f"system prompt: {system_tokens} tokens")
            url, keys, orch = start_orch(
                procs,
                tmp,
                policy,
                engines,
                servers[0].model_digest,
                servers[0].engine_version,
                args.imbalance_abs,
                args.tenants,
                args.cache_ram != 0,
            )
            before = engine_cache(engines)
            log(f"{policy}: driving")
            w0 = time.monotonic()
            recs = asyncio.run(drive(url, keys, systems, args))
            wall = time.monotonic() - w0
            after = engine_cache(engines)
            cache = {
                "cached": sum(after[u][0] - before[u][0] for u in engines),
                "evaluated": sum(after[u][1] - before[u][1] for u in engines),
            }
            # the engines' own per-request figures (replica bench-e<i> is endpoint i)
            runs = {
                f"bench-e{i}": engine_runs(server.log, server.started)
                for i, server in enumerate(servers)
            }
            attach_engine_runs(recs, runs)
            results[policy] = summarise(recs, wall, cache)
            raw[policy] = recs
            log(f"{policy}: {json.dumps(results[policy])}")
            (tmp / f"{policy}.json").write_text(
                json.dumps({"summary": results[policy], "tasks": recs})
            )
            try:  # orchestratord's own view: placement decisions, prefix_hit_ratio
                page = http_get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
                (tmp / f"metrics-{policy}.txt").write_bytes(page)
                results[policy]["orchestrator_series"] = [
                    line
                    for line in page.decode().splitlines()
                    if line.startswith(("placement_decisions_total{", "prefix_hit_ratio{"))
                ]
            except OSError as exc:
                log(f"{policy}: /metrics not read: {exc}")
            procs.stop(orch)
            for server in servers:
                procs.stop(server.proc)
            attach_queue_times(recs, tmp / f"orch-{policy}.log")
            results[policy] |= {
                k: v
                for k, v in summarise(recs, wall, cache).items()
                if "queue" in k or "engine_f" in k
            }
    finally:
        procs.stop_all()
    import os
    import platform

    meta = {
        "started": started,
        "command": "uv run --frozen python bench/prefix_placement.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "took_s": time.monotonic() - t0,
        "threads": args.threads,
        "turns": args.turns,
        "imbalance_abs": args.imbalance_abs,
        "tenants": args.tenants,
        "sessions": args.sessions,
        "engines_restarted": True,  # ORCH-2367
        "prompts": args.prompts,
        "cache_ram": args.cache_ram,
        "learn": "completion",  # the PlacementConfig default since run 3
        "max_tokens": args.max_tokens,
        "user_tokens": args.user_tokens,
        "think_ms": args.think_ms,
        "uptime": uptime_start,
        "system_tokens": system_tokens,
        "engine_version": servers[0].engine_version if servers else "",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load avg "
        f"{os.getloadavg()[0]:.1f} at the end (shared with other jobs)",
    }
    report = render(results, meta)
    out = HERE / "results"
    (out / f"{stamp}-prefix-placement.md").write_text(report)
    (out / f"{stamp}-prefix-placement.json").write_text(
        json.dumps({"meta": meta, "results": results, "tasks": raw}, indent=1)
    )
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
