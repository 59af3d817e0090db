"""Issue #14 part 4: the pre-commit config runs the suite's own lint, format and type checks."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_pre_commit_runs_ruff_format_and_mypy_strict_from_the_workspace() -> None:
    doc = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    (repo,) = doc["repos"]
    assert repo["repo"] == "local"  # no hook repository to fetch, versions from uv.lock
    hooks = {h["id"]: h for h in repo["hooks"]}
    assert set(hooks) == {"ruff", "ruff-format", "mypy"}
    for h in hooks.values():
        assert h["language"] == "system" and h["entry"].startswith("uv run --frozen ")
    assert hooks["ruff"]["entry"].split()[3:5] == ["ruff", "check"]
    assert hooks["ruff-format"]["entry"].split()[3:5] == ["ruff", "format"]
    assert "--check" not in hooks["ruff-format"]["entry"]  # it formats, then the commit retries
    mypy = hooks["mypy"]
    assert mypy["entry"].split()[3:] == ["mypy", "--strict"] and mypy["pass_filenames"] is False
