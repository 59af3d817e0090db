"""ORCH-2950: a forecast is a function of the events a process saw, not of the process:
the same drive of ``Workload`` (dispatches, first tokens, tokens, ends on two replicas)
gives the same replica loads, to the bit, under two string-hash seeds. The running tasks
of a replica were a ``set`` of records hashed by task id, so their order, and with it the
order of the floats summed into a replica's pace (``replica_pace``) and its trace, changed
with ``PYTHONHASHSEED``."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from types import SimpleNamespace


def _drive(steps: int = 400, seed: int = 5) -> str:
    from llama_orch.core.adapter_api import GenerateRequest
    from llama_orch.core.replica import ReplicaState
    from llama_orch.core.servicetime import Prior
    from llama_orch.core.task import Phase
    from llama_orch.orchestratord.tasks import TaskRecord
    from llama_orch.orchestratord.workload import Workload

    engine = "llamacpp-http"
    rng = random.Random(seed)
    w = Workload()
    w._priors[engine] = Prior(decode_ms_per_token=20.0, prefill_ms_per_token=2.0)
    reps = {}
    for i in range(2):
        rid = f"p-e{i}"
        state = ReplicaState(pool_id="p", replica_id=rid, engine=engine, status="ready", slots=6)
        reps[rid] = SimpleNamespace(state=state)
    pool = SimpleNamespace(id="p", engine=engine, replicas=reps, queue=[])
    for rid, r in reps.items():
        w.model(pool, rid, r.state.slots)  # type: ignore[arg-type]
    now, out = 100.0, hashlib.sha256()
    live: list[tuple[str, TaskRecord]] = []
    for k in range(steps):
        now += rng.uniform(0.01, 0.6)
        kind = rng.choice(("dispatch", "first", "tokens", "tokens", "tokens", "end"))
        if (kind == "dispatch" and len(live) < 12) or not live:
            rid = f"p-e{rng.randrange(2)}"
            req = GenerateRequest(task_id=f"t{k}", prompt="x" * 9, max_tokens=300, seed=1)
            rec = TaskRecord(f"t{k}", "p", engine, "interactive", req, rng.randrange(20, 900))
            rec.dispatched = now
            rec.lifecycle.dispatch()
            w.started("p", rid, rec)
            w.dispatched(pool, pool.replicas[rid], rec, now)  # type: ignore[arg-type]
            live.append((rid, rec))
        else:
            rid, rec = live[rng.randrange(len(live))]
            if rec.run_first_token is None:
                rec.run_first_token = rec.last_token = now
                rec.engine_tokens += 1
            elif kind == "end":
                live.remove((rid, rec))
                rec.lifecycle.end(Phase.COMPLETED, now)
                w.observe(pool, pool.replicas[rid], rec, now)  # type: ignore[arg-type]
                w.ended("p", rid, rec)
            else:
                n = rng.randrange(1, 30)
                rec.engine_tokens += n
                rec.last_token = now
                rec.busy_sum += rng.randrange(1, 7) * n
                rec.run_chunks += n
        trace: list[list[tuple[object, ...]]] = []
        loads = w.loads(pool, now, trace=trace)  # type: ignore[arg-type]
        terms = [(x.slots, list(x.running_ms), x.pace, x.prefill_ms) for x in loads]
        out.update(repr((terms, trace)).encode())  # not the model: its repr is an address
    return out.hexdigest()


def _digest_under(hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    code = f"import runpy; runpy.run_path({__file__!r}, run_name='__drive__')"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_same_events_give_the_same_loads_under_any_hash_seed():
    """ORCH-2950: two processes, two hash seeds, one digest of every step's loads."""
    digests = {_digest_under(s) for s in ("1", "2", "3")}
    assert len(digests) == 1, digests


if __name__ == "__drive__":
    print(_drive())
