"""What one llama-server does with a shared system prompt across its slots (ORCH-2361).

Five requests on one engine (4 slots, 1 thread, the bench's flags), each printed
with the engine's own ``timings.prompt_n`` (prompt tokens evaluated) and
``cache_n`` (taken from its cache) and the slot it used:

1. session A, turn 1 (cold);
2. session B, turn 1, sharing only the system prompt, while A's slot is idle;
3. session A, turn 2 (its prompt starts with turn 1 and its answer);
4. a long run D, and meanwhile 5. session C, turn 1, while the slot holding the
   system prompt is busy.

Run it with extra engine flags to compare, e.g. ``--cache-ram 0`` or ``--kv-unified``:

    flock /work/bench.lock uv run --frozen python bench/llama_slot_probe.py
    flock /work/bench.lock uv run --frozen python bench/llama_slot_probe.py --cache-ram 0

Measured on build 11434 (session 6), the same with the default 8 GiB host cache,
``--cache-ram 0`` and ``--kv-unified``: B takes A's idle slot (LCP similarity) and
evaluates 11 tokens; A's turn 2 then evaluates 42 (everything after the system
prompt: its first message, 20-token answer and new message; its history was lost,
and the host cache did not restore it); C, arriving while the system prompt's slot
is busy, evaluates all 733 tokens in an empty slot.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Procs, start_llama_server

MODEL = "pypi:smollm2-135m-instruct-q4_1"


def main(argv: list[str]) -> int:
    tmp = Path(f"/tmp/llorch-slot-probe-{time.strftime('%H%M%S')}")
    tmp.mkdir(parents=True, exist_ok=True)
    procs = Procs(tmp)
    rows: list[str] = []
    try:
        engine = start_llama_server(
            procs,
            "llama-server",
            model=MODEL,
            extra_flags=("--no-repack", "-b", "64", "-ub", "64", *argv),
        )
        system = "You are the help desk of a small library. " + " ".join(
            f"Rule {n}: answer politely and stay on topic." for n in range(60)
        )

        def ask(tag: str, prompt: str, n: int = 20) -> str:
            body = {"prompt": prompt, "n_predict": n, "temperature": 0, "cache_prompt": True}
            req = urllib.request.Request(engine.url + "/completion", json.dumps(body).encode())
            with urllib.request.urlopen(req, timeout=300) as r:
                got: dict[str, Any] = json.loads(r.read())
            t = got["timings"]
            rows.append(f"| {tag} | {got.get('id_slot')} | {t['prompt_n']} | {t.get('cache_n')} |")
            return str(got["content"])

        a1 = system + "\nUser A: tell me about owls.\nAssistant:"
        answer = ask("A turn 1 (cold)", a1)
        ask(
            "B turn 1 (shares the system prompt; A's slot idle)",
            system + "\nUser B: tell me about tea.\nAssistant:",
        )
        ask("A turn 2 (after B)", a1 + answer + "\nUser A: and why?\nAssistant:")
        long_run = threading.Thread(
            target=ask,
            args=("D long run", system + "\nUser D: write a long story.\nAssistant:", 150),
        )
        long_run.start()
        time.sleep(1.5)
        ask(
            "C turn 1 (the system prompt's slot busy)",
            system + "\nUser C: tell me about maps.\nAssistant:",
        )
        long_run.join()
    finally:
        procs.stop_all()
    print(f"llama-server {engine.engine_version}, flags: {' '.join(argv) or '(defaults)'}\n")
    print("| request | slot | prompt tokens evaluated | from cache |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
