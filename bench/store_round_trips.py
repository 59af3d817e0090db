#!/usr/bin/env python3
"""The store commands one orchestratord sends per 1-token request (issue #13, ORCH-2595).

Starts one fake engine (0 ms/token), one embedded valkey-server and one
orchestratord with ``state: {backend: valkey, url}`` (each stopped by PID or
process group at the end), warms it up, then records every command the server
receives (``MONITOR``, on a connection of its own) while ``bench/loadgen.py`` runs
``--requests`` 1-token tasks (submit + SSE stream) at ``-c``. Prints the commands
per request by name (``FCALL`` by function) and how many TCP connections sent
them. This counts; it does not time (``MONITOR`` costs the server CPU): the CPU
figures are ``bench/ha_relay.py``'s and ``bench/store_client_cpu.py``'s.

    uv run python bench/store_round_trips.py [--requests 400] [-c 16] [--before CHECKOUT]

``--before``: the same count with orchestratord on another checkout's sources.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import valkey
from procs import HERE, PY, Procs, log, start_fake, start_orch


def _loadgen(url: str, n: int, c: int) -> dict[str, Any]:
    cmd = [PY, str(HERE / "loadgen.py"), "--mode", "orch", "--url", url]
    cmd += ["--concurrency", str(c), "--requests", str(n), "--max-tokens", "1", "--warmup", "0"]
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def count(url: str, store_url: str, n: int, c: int) -> dict[str, Any]:
    _loadgen(url, max(32, c), c)  # warm-up: connections opened, code paths loaded
    seen: collections.Counter[str] = collections.Counter()
    clients: set[str] = set()
    client = valkey.Valkey.from_url(store_url)
    ready = threading.Event()
    marker = "store-round-trips-end"

    def watch() -> None:
        with client.monitor() as m:
            ready.set()
            for cmd in m.listen():
                if cmd.get("client_type") == "lua":
                    continue  # run inside a function: no round trip of its own
                if marker in cmd["command"]:
                    return  # every command sent before it was seen
                words = cmd["command"].split(" ", 2)  # the command and the function
                if not words or words[0].upper() in ("PING", "ECHO"):
                    continue
                name = words[0].upper()
                if name == "FCALL":
                    name = f"FCALL {words[1].strip(chr(34))}"
                seen[name] += 1
                clients.add(cmd.get("client_address", "") + ":" + str(cmd.get("client_port")))

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    ready.wait(10)
    res = _loadgen(url, n, c)
    with valkey.Valkey.from_url(store_url) as other:
        other.echo(marker)  # after every command of the run
    t.join(60)
    client.close()
    ok = res["ok"]
    return {
        "ok": ok,
        "errors": res["errors"],
        "per_request": {k: v / ok for k, v in sorted(seen.items())},
        "total_per_request": sum(seen.values()) / ok,
        "connections": len(clients),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("--before", type=Path, default=None)
    args = ap.parse_args()
    from llama_orch.state_valkey import EmbeddedServer

    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="store-rt-") as tmp_s:
        tmp = Path(tmp_s)
        procs = Procs(tmp)
        server = EmbeddedServer(tmp / "valkey")
        try:
            furl, _ = start_fake(procs, "fake-0ms", 0.0)
            store_url = server.start()
            runs: list[tuple[str, str | None]] = [("after", None)]
            if args.before is not None:
                src = args.before.resolve() / "packages"
                overlay = os.pathsep.join(
                    str(src / p / "src") for p in ("core", "orchestratord", "state-valkey")
                )
                runs.insert(0, ("before", overlay))
            for name, overlay in runs:
                state = {"backend": "valkey", "url": store_url, "key_prefix": name}
                url, p = start_orch(
                    procs, f"orch-{name}", furl, tmp, state=state, pythonpath=overlay
                )
                log(f"counting {name}")
                rows[name] = count(url, store_url, args.requests, args.concurrency)
                procs.stop(p)
        finally:
            procs.stop_all()
            server.stop()
    names = sorted({k for r in rows.values() for k in r["per_request"]})
    print(f"store commands per 1-token request, c={args.concurrency}, {args.requests} requests\n")
    print("| command | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k in names:
        print(f"| {k} | " + " | ".join(f"{r['per_request'].get(k, 0):.3f}" for r in rows.values()))
    print("| **all** | " + " | ".join(f"{r['total_per_request']:.3f}" for r in rows.values()))
    print("| connections | " + " | ".join(str(r["connections"]) for r in rows.values()))
    print("\n```json\n" + json.dumps(rows, indent=1) + "\n```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
