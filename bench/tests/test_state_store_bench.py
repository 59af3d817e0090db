"""Smoke run of bench/state_store.py with tiny sizes (not in the default test paths).

uv run pytest bench/tests -q
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "state_store.py"


def test_state_store_bench_prints_both_backends_side_by_side() -> None:
    args = ["--pairs", "40", "--clients", "2", "--concurrency", "4", "--events", "64"]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    row = next(ln for ln in lines if ln.startswith("pairs/s, 1 client, sequential"))
    # memory, valkey through valkey-py's pool (before ORCH-2595), valkey, memory/valkey
    memory, pool, valkey = (float(x.replace(",", "")) for x in row.split()[-4:-1])
    assert memory > 0 and pool > 0 and valkey > 0
    assert any(ln.startswith("appends/s, 16 events per call") for ln in lines)
