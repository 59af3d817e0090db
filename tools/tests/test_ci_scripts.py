"""ci/scripts: link checker (ORCH-6005) and TODO archiver (ORCH-6007)."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "ci" / "scripts"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(script: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPTS / script), str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_repository_links_are_valid(repo_root: Path) -> None:
    result = _run("check_links.sh", repo_root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_broken_links_are_listed(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# there\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "ignored.md").write_text("[x](nowhere.md)\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/there.md#part) [web](https://example.com) [anchor](#top)\n"
        '![img](docs/missing.png) [bad](docs/gone.md "title")\n'
        "`[code](not/checked.md)`\n"
        "```\n[fenced](not/checked.md)\n```\n"
        "[ref]: docs/also-gone.md\n"
    )
    result = _run("check_links.sh", tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "README.md:2: docs/missing.png",
        "README.md:2: docs/gone.md",
        "README.md:7: docs/also-gone.md",
    ]


def test_archive_refuses_open_items(tmp_path: Path) -> None:
    todo = tmp_path / "TODO.md"
    todo.write_text("# T\n- [x] done\n- [ ] open\n")
    result = _run("archive_todo.sh", tmp_path)
    assert result.returncode == 1
    assert "TODO.md:3" in result.stderr
    assert todo.read_text() == "# T\n- [x] done\n- [ ] open\n"
    assert not (tmp_path / ".docs").exists()


def test_archive_refuses_a_tracker_without_checkboxes(tmp_path: Path) -> None:
    (tmp_path / "TODO.md").write_text("# nothing here\n")
    assert _run("archive_todo.sh", tmp_path).returncode == 1


def test_archive_moves_a_finished_tracker_and_numbers_it(tmp_path: Path) -> None:
    done = tmp_path / ".docs" / "DONE"
    done.mkdir(parents=True)
    (done / "TODO-2020-01-01-4.md").write_text("old\n")
    (tmp_path / "TODO.md").write_text("# T\n- [x] one\n  * [X] two\n")
    result = _run("archive_todo.sh", tmp_path)
    assert result.returncode == 0, result.stderr
    today = datetime.date.today().isoformat()
    archived = done / f"TODO-{today}-5.md"
    assert archived.read_text() == "# T\n- [x] one\n  * [X] two\n"
    fresh = (tmp_path / "TODO.md").read_text()
    assert "- [ ]" in fresh and "## Proofs" in fresh


def test_archive_keeps_relative_links_valid(tmp_path: Path) -> None:
    """ORCH-6007: links in the archived tracker still point at the same files."""
    (tmp_path / "a.md").write_text("x\n")
    (tmp_path / "TODO.md").write_text(
        "- [x] see [a](a.md), [web](https://x.org/y), [here](#proofs), [abs](/etc/hosts)\n"
    )
    result = _run("archive_todo.sh", tmp_path)
    assert result.returncode == 0, result.stderr
    (archived,) = (tmp_path / ".docs" / "DONE").glob("TODO-*.md")
    assert archived.read_text() == (
        "- [x] see [a](../../a.md), [web](https://x.org/y), [here](#proofs), [abs](/etc/hosts)\n"
    )
    assert _run("check_links.sh", tmp_path).returncode == 0
