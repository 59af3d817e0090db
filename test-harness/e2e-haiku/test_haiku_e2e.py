"""The Haiku end-to-end proof of ARCHITECTURE §10 (ORCH-4003, ORCH-4005).

A real Qwen2.5-Coder-0.5B-Instruct behind a real ``llama-server``, started by
orchestratord's embedded pool manager, is asked through OrchQueue v1
(``POST /v1/tasks`` + SSE, chat workload so the adapter applies the model's
chat template) for a haiku holding the current Europe/Amsterdam minute in
English words and a fresh 8-letter lowercase nonce. A correct answer cannot
come from a cache or a fixture; the anti-cheat scans make sure of it, and the
same protocol run against the mock adapter must fail.

Each run writes the poem and the facts to ``reports/haiku-<time>.json``
(gitignored) and to the pytest tmp dir.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import dropwhile
from pathlib import Path
from typing import Any

import pytest
from llama_orch.cli.haiku import (
    AMSTERDAM,
    HAIKU_GRAMMAR,
    check_haiku,
    haiku_messages,
    haiku_prompt,
    make_nonce,
    minute_words,
)
from orch_harness import REPO_ROOT, config, mock_pool, prometheus_samples

QWEN_REF = "pypi:qwen2.5-coder-0.5b-instruct-q4_k_m"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
TOKEN_COUNTER = "llamacpp:tokens_predicted_total"
SEED = 20240607
MAX_TOKENS = 64
DECODE_BUDGET_MS = 30_000
REPORTS = Path(__file__).resolve().parent / "reports"

# Directories the source scan skips: environments, caches, and run reports
# (a report legitimately holds the minute words and the nonce).
_SKIP_DIRS = {
    ".git",
    ".venv",
    "node_modules",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
    "reports",
}


def _walk(root: Path):  # type: ignore[no-untyped-def]
    for path in root.iterdir():
        if path.is_dir() and not path.is_symlink():
            if path.name not in _SKIP_DIRS:
                yield path
                yield from _walk(path)
        elif path.is_file():
            yield path


def haiku_fixtures(root: Path) -> list[Path]:
    """Every ``fixtures/haiku*`` below ``root``: a canned answer is cheating."""
    return [p for p in _walk(root) if p.parent.name == "fixtures" and p.name.startswith("haiku")]


def lines_with_both(root: Path, words: str, nonce: str) -> list[str]:
    """``file:line`` of every source line holding both the minute words and the nonce."""
    hits = []
    for path in _walk(root):
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        raw = path.read_bytes()
        if b"\0" in raw or nonce.encode() not in raw:
            continue
        for n, line in enumerate(raw.decode(errors="replace").splitlines(), 1):
            if nonce in line and words.lower() in line.lower():
                hits.append(f"{path.relative_to(root)}:{n}")
    return hits


def engine_counter(base_url: str) -> float | None:
    """The engine's own generated-token counter, or None when /metrics is absent."""
    if not base_url.startswith("http"):
        return None
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    return prometheus_samples(text).get(TOKEN_COUNTER)


@dataclass
class HaikuRun:
    minute_words: str
    nonce: str
    seed: int
    prompt: str
    started: dict[str, Any] = field(default_factory=dict)
    end: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    counter_before: float | None = None
    counter_after: float | None = None
    problems: list[str] = field(default_factory=list)

    def assess(self, *, expected_digest: str | None = None) -> list[str]:
        """Every reason this run does not satisfy §10 (empty = accepted)."""
        check = check_haiku(self.text, self.minute_words, self.nonce)
        problems = list(self.problems)
        if check.non_empty_lines < 3:
            problems.append(f"only {check.non_empty_lines} non-empty lines")
        if not check.has_minute_words:
            problems.append(f"minute words {self.minute_words!r} missing")
        if not check.has_nonce:
            problems.append(f"nonce {self.nonce!r} missing")
        engine = str(self.started.get("engine", ""))
        if not engine or "mock" in engine or "mock" in str(self.started.get("engine_version")):
            problems.append(f"mock or unknown engine {engine!r}")
        if not self.started.get("engine_version"):
            problems.append("started carries no engine_version")
        if not self.started.get("model_digest"):
            problems.append("started carries no model_digest")
        elif expected_digest and self.started["model_digest"] != expected_digest:
            problems.append(f"model_digest {self.started['model_digest']} is not the pinned one")
        if self.counter_before is None or self.counter_after is None:
            problems.append(f"engine /metrics absent or without {TOKEN_COUNTER}")
        elif self.counter_after <= self.counter_before:
            problems.append("the engine's token counter did not rise")
        if self.end.get("decode_ms", DECODE_BUDGET_MS + 1) > DECODE_BUDGET_MS:
            problems.append(f"decode took {self.end.get('decode_ms')} ms > budget")
        return problems


async def run_protocol(
    harness: Any, pool_id: str, repo_root: Path, grammar: str | None = HAIKU_GRAMMAR
) -> HaikuRun:
    """ARCHITECTURE §10 through OrchQueue v1, with the anti-cheat scans. ``grammar``
    (ORCH-1010) gives the answer three lines and nothing of its content."""
    health = await harness.wait_ready(pool_id)
    base_url = health["replicas"][0]["base_url"]
    now = datetime.now(AMSTERDAM)
    run = HaikuRun(minute_words(now.minute), make_nonce(8), SEED, "")
    run.prompt = haiku_prompt(run.minute_words, run.nonce)
    if found := haiku_fixtures(repo_root):
        run.problems.append(f"canned answers present: {found}")
    if found := lines_with_both(repo_root, run.minute_words, run.nonce):
        run.problems.append(f"source lines hold the minute words and the nonce: {found}")
    run.counter_before = await asyncio.to_thread(engine_counter, base_url)
    status, body, _ = await harness.submit(
        workload="chat",
        messages=haiku_messages(run.minute_words, run.nonce),
        grammar=grammar,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        seed=SEED,
        pool_id=pool_id,
    )
    assert status == 202, body
    # a task that waited for the slot has `queued` events first, the only events
    # allowed before `started` (ORCH-1961, ORCH-1117)
    events = list(dropwhile(lambda e: e[1] == "queued", await harness.events(body["task_id"])))
    assert events[0][1] == "started" and events[-1][1] == "end", events
    run.started, run.end = events[0][2], events[-1][2]
    run.text = "".join(e[2]["t"] for e in events if e[1] == "token")
    run.counter_after = await asyncio.to_thread(engine_counter, base_url)
    return run


def _write_report(run: HaikuRun, problems: list[str], tmp_path: Path) -> Path:
    doc = {**asdict(run), "problems": problems, "accepted": not problems}
    doc["amsterdam_time"] = datetime.now(AMSTERDAM).isoformat(timespec="seconds")
    (tmp_path / "haiku-report.json").write_text(json.dumps(doc, indent=2))
    REPORTS.mkdir(exist_ok=True)
    path = REPORTS / f"haiku-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


@pytest.mark.real_engine
async def test_haiku_e2e_on_real_qwen(
    start_orchestrator, llama_server_binary, qwen_model, tmp_path, monkeypatch
):
    """ORCH-4003: §10 on Qwen2.5-Coder-0.5B-Instruct through orchestratord, real engine."""
    monkeypatch.setenv("TZ", "Europe/Amsterdam")
    assert qwen_model[1] == QWEN_SHA256
    harness = await start_orchestrator(
        config(
            {
                "allow_cpu_inference": True,
                "pools": [
                    {
                        "id": "haiku",
                        "engine": "llamacpp-http",
                        "model": QWEN_REF,
                        "slots": 1,
                        "ctx": 1024,
                        "threads": 2,
                    }
                ],
            }
        )
    )
    run = await run_protocol(harness, "haiku", REPO_ROOT)
    problems = run.assess(expected_digest=QWEN_SHA256)
    report = _write_report(run, problems, tmp_path)
    print(f"\nhaiku report: {report}\n{run.text}")
    assert run.started["engine"] == "llamacpp-http"
    assert run.started["engine_version"] == llama_server_binary.engine_version
    assert not problems, f"{problems}\n--- output ---\n{run.text}"
    # ORCH-4019: the engine enforced the gate's form-only grammar (no A-Z anywhere)
    assert not any("A" <= c <= "Z" for c in run.text), run.text


async def test_haiku_protocol_fails_on_the_mock_engine(start_orchestrator):
    """ORCH-4005: the same protocol against the mock adapter is never accepted."""
    harness = await start_orchestrator(config({"pools": [mock_pool("haiku")]}))
    run = await run_protocol(harness, "haiku", REPO_ROOT, grammar=None)  # mock: no grammar
    problems = run.assess()
    assert any("mock" in p for p in problems), problems
    assert any("/metrics absent" in p for p in problems), problems


def test_anti_cheat_scans_find_planted_answers(tmp_path):
    """ORCH-4003: the scans are not vacuous: a canned haiku and a cheating line are found."""
    words, nonce = "forty-two", make_nonce(8)
    (tmp_path / "pkg" / "fixtures").mkdir(parents=True)
    (tmp_path / "pkg" / "fixtures" / "haiku_answer.txt").write_text("canned\n")
    (tmp_path / "pkg" / "cheat.py").write_text(f"ANSWER = 'Forty-Two {nonce}'\nok = 1\n")
    (tmp_path / "pkg" / "innocent.py").write_text(f"A = '{nonce}'\nB = 'forty-two'\n")
    assert haiku_fixtures(tmp_path) == [tmp_path / "pkg" / "fixtures" / "haiku_answer.txt"]
    assert lines_with_both(tmp_path, words, nonce) == ["pkg/cheat.py:1"]
    assert haiku_fixtures(REPO_ROOT) == []
