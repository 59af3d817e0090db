#!/usr/bin/env python3
"""Client CPU of packing one ``llorch_append_many`` command, per event (ORCH-2621).

In process, no server: the e809c1b path (a flat argument list, then ``pack`` with
three parts per argument) against the events packed straight into the command
(``event_bulks``), on the same batches: ``--tasks`` tasks' batches of ``--events``
token events each (the data of a real token event). Alternating blocks, ``--rounds``
each; µs per event, median and min..max of the rounds.

    uv run python bench/append_pack.py [--events 128] [--tasks 1] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from llama_orch.core.state_store import Event
from llama_orch.state_valkey._pipe import bulk, event_bulks, pack

HEAD = ("FCALL", "llorch_append_many", 1, "{llorch}:")
Batches = list[tuple[str, int, list[Event]]]


def flat_pack(batches: Batches) -> bytes:
    flat: list[object] = []
    for task_id, epoch, events in batches:
        flat += [task_id, epoch, len(events)]
        for ev in events:
            flat += [ev.kind, ev.data]
    return pack((*HEAD, *flat))


def direct_pack(batches: Batches) -> bytes:
    tail: list[bytes] = []
    for task_id, epoch, events in batches:
        tail += (bulk(task_id.encode()), bulk(b"%d" % epoch), bulk(b"%d" % len(events)))
        event_bulks(events, tail)
    return pack(HEAD, tail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=128)
    ap.add_argument("--tasks", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    data = b'{"text":" hello","index":17,"token_id":1234}'
    batches: Batches = [
        (f"task-{t:08d}", 3 + t, [Event("token", data) for _ in range(args.events)])
        for t in range(args.tasks)
    ]
    assert flat_pack(batches) == direct_pack(batches)
    per = {"flat (e809c1b)": flat_pack, "direct (ORCH-2621)": direct_pack}
    out: dict[str, list[float]] = {k: [] for k in per}
    n_ev = args.events * args.tasks
    for r in range(args.rounds):
        for name in per if r % 2 == 0 else reversed(per):
            f = per[name]
            t0 = time.process_time()
            for _ in range(args.calls):
                f(batches)
            out[name].append((time.process_time() - t0) / args.calls / n_ev * 1e6)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"cores {os.cpu_count()}, load average {load}; {args.tasks} task(s) x {args.events}")
    for name, xs in out.items():
        print(f"{name}: {statistics.median(xs):.3f} µs/event [{min(xs):.3f}..{max(xs):.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
