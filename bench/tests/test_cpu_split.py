"""ORCH-2792: the CPU split gives every side and path an orchestratord of its own, and
every one of them serves the same runs in the same order (no processes run: the process
starter and the load generator are replaced by recorders).

uv run pytest bench/tests -q
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import run  # bench/run.py


class _Proc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


class _Procs:
    def __init__(self) -> None:
        self.stopped: list[int] = []

    def stop(self, p: _Proc) -> None:
        self.stopped.append(p.pid)


def _split(
    monkeypatch: pytest.MonkeyPatch, compare_src: str | None
) -> tuple[dict[int, str | None], dict[int, list[tuple[str, int, int]]], _Procs, dict[str, Any]]:
    started: dict[int, str | None] = {}  # pid -> the PYTHONPATH it was started with
    served: dict[int, list[tuple[str, int, int]]] = {}  # pid -> (mode, tokens, requests)

    def start_orch(procs: Any, name: str, furl: str, tmp: Path, **kw: Any) -> tuple[str, _Proc]:
        pid = 1000 + len(started)
        started[pid] = kw.get("pythonpath")
        return f"http://orch-{pid}", _Proc(pid)

    def loadgen(mode: str, url: str, c: int, n: int, **kw: Any) -> dict[str, Any]:
        pid = kw["watch"]["orch"]
        assert url == f"http://orch-{pid}"  # the process watched is the one loaded
        served.setdefault(pid, []).append((mode, kw["max_tokens"], n))
        return {"ok": n, "done": n, "errors": 0, "tokens": n, "req_per_s": 1.0,
                "cpu_s": {"orch": 1.0, "engine": 1.0}}  # fmt: skip

    monkeypatch.setattr(run, "start_orch", start_orch)
    monkeypatch.setattr(run, "loadgen", loadgen)
    args = argparse.Namespace(
        compare_src=compare_src, no_one_request=False, no_cpu_facade=False, cpu_requests=1500,
        quick=False,
        cap_s=15.0, litellm_route="chat", litellm_cap_s=40.0,
    )  # fmt: skip
    procs = _Procs()
    out = run.stage_cpu_split(procs, Path("/nonexistent"), args, "http://fake", 1, None)  # type: ignore[arg-type]
    return started, served, procs, out


def test_each_side_has_its_own_process_with_the_same_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started, served, procs, out = _split(monkeypatch, "/before/src")
    # five processes: two-step, one request, facade, the compared sources' one request
    # and facade
    assert sorted(started.values(), key=str) == ["/before/src", "/before/src", None, None, None]
    assert set(served) == set(started)
    # every process served only one path ...
    for pid, runs in served.items():
        assert len({mode for mode, _t, _n in runs}) == 1, (pid, runs)
    # ... and all served the same tokens and counts in the same order (ABBA: two of each)
    histories = {tuple((t, n) for _m, t, n in runs) for runs in served.values()}
    assert histories == {((1, 1500), (1, 1500), (128, 1500), (128, 1500))}
    assert sorted(procs.stopped) == sorted(started)
    assert {k: v["runs"] for k, v in out.items()} == {
        f"{k}_{t}": 2
        for k in ("orch", "orch_stream", "orch_stream_before", "orch_openai", "orch_openai_before")
        for t in (1, 128)
    }


def test_without_a_comparison_one_process_and_run_per_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started, served, _procs, out = _split(monkeypatch, None)
    assert len(started) == 3
    assert sorted(runs[0][0] for runs in served.values()) == ["openai", "orch", "stream"]
    assert {tuple((t, n) for _m, t, n in r) for r in served.values()} == {((1, 1500), (128, 1500))}
    assert sorted(out) == [
        f"{k}_{t}" for k in ("orch", "orch_openai", "orch_stream") for t in (1, 128)
    ]
