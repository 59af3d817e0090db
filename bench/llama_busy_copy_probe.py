"""Can a *busy* llama-server slot be the source of a slot copy (ORCH-2372)?

One engine (4 slots, 1 thread, the placement bench's flags, ``--slot-save-path``).
Reference answers first, each alone in an emptied slot: A (a shared system prompt
and a long answer) and B (the same system prompt, another question). Then, with
every slot erased again, A runs pinned to slot 0; while slot 0 generates (its
``n_decoded`` > 0 in ``GET /slots``) it is saved and restored into slot 1, and B
runs pinned to slot 1. The probe prints B's evaluated prompt tokens (the engine's
``timings.prompt_n``) and whether A's and B's greedy answers equal their
references: the save must neither disturb the generating slot nor hand over a
state that differs from what its tokens say.

    flock -s /work/bench.lock uv run --frozen python bench/llama_busy_copy_probe.py
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
    tmp = Path(f"/tmp/llorch-busy-copy-{time.strftime('%H%M%S')}")
    (tmp / "slots").mkdir(parents=True, exist_ok=True)
    procs = Procs(tmp)
    out: list[str] = []
    try:
        engine = start_llama_server(
            procs,
            "llama-server",
            model=MODEL,
            extra_flags=("--no-repack", "-b", "64", "-ub", "64", *argv),
            slot_save_path=tmp / "slots",
        )

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            req = urllib.request.Request(engine.url + path, json.dumps(body).encode())
            with urllib.request.urlopen(req, timeout=300) as r:
                got: dict[str, Any] = json.loads(r.read())
                return got

        def slots() -> list[dict[str, Any]]:
            with urllib.request.urlopen(engine.url + "/slots", timeout=30) as r:
                got: list[dict[str, Any]] = json.loads(r.read())
                return got

        def ask(prompt: str, slot: int, n: int) -> dict[str, Any]:
            body = {"prompt": prompt, "n_predict": n, "temperature": 0, "cache_prompt": True}
            return post("/completion", body | {"id_slot": slot})

        def erase() -> None:
            for i in range(4):
                post(f"/slots/{i}?action=erase", {})

        system = "You are the help desk of a small library. " + " ".join(
            f"Rule {n}: answer politely and stay on topic." for n in range(60)
        )
        a = system + "\nUser A: write a long story about owls.\nAssistant:"
        b = system + "\nUser B: tell me about tea.\nAssistant:"
        ref_a = ask(a, 2, 150)
        erase()
        ref_b = ask(b, 3, 40)
        out.append(f"reference A: prompt_n {ref_a['timings']['prompt_n']}")
        out.append(f"reference B: prompt_n {ref_b['timings']['prompt_n']} (cold)")
        erase()
        got_a: dict[str, Any] = {}
        run_a = threading.Thread(target=lambda: got_a.update(ask(a, 0, 150)))
        run_a.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            s0 = slots()[0]
            if s0.get("is_processing") and s0.get("next_token", [{}])[0].get("n_decoded", 0) > 0:
                break
            time.sleep(0.05)
        decoded = slots()[0].get("next_token", [{}])[0].get("n_decoded")
        t0 = time.monotonic()
        saved = post("/slots/0?action=save", {"filename": "busy.bin"})
        restored = post("/slots/1?action=restore", {"filename": "busy.bin"})
        copy_ms = (time.monotonic() - t0) * 1000
        out.append(
            f"copy of busy slot 0 (n_decoded {decoded}) into slot 1: "
            f"saved {saved.get('n_saved')} tokens, restored {restored.get('n_restored')}, "
            f"{copy_ms:.0f} ms"
        )
        got_b = ask(b, 1, 40)
        run_a.join()
        out.append(
            f"B in slot 1: prompt_n {got_b['timings']['prompt_n']}, "
            f"cache_n {got_b['timings'].get('cache_n')}, "
            f"answer equal to reference: {got_b['content'] == ref_b['content']}"
        )
        out.append(
            f"A in slot 0 (saved while generating): answer equal to reference: "
            f"{got_a.get('content') == ref_a['content']}, tokens {got_a.get('tokens_predicted')}"
        )
    finally:
        procs.stop_all()
    print(f"llama-server {engine.engine_version}\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
