"""tools/spec-extract: format, determinism, duplicates, citations.

Proves ORCH-6004, ORCH-0004 and ORCH-0005.

Fake requirement IDs are assembled at run time (``_id``) so that this file never
cites an ID that the specs do not define.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import yaml

# IDs cited by code written before the specs: the specs must define every one.
REQUIRED_IDS = (
    "ORCH-0001 ORCH-1001 ORCH-1002 ORCH-1003 ORCH-1004 ORCH-1101 ORCH-1102 ORCH-1103 "
    "ORCH-1104 ORCH-1105 ORCH-1106 ORCH-1107 ORCH-1201 ORCH-1301 ORCH-1302 ORCH-1401 "
    "ORCH-1501 ORCH-1601 ORCH-2001 ORCH-2002 ORCH-2003 ORCH-2004 ORCH-3001 ORCH-3002 "
    "ORCH-3003 ORCH-3004 ORCH-3005 ORCH-3006 ORCH-3007 ORCH-3008 ORCH-3009 ORCH-4001 "
    "ORCH-5001 ORCH-6001 ORCH-POOL-3001 ORCH-POOL-3003 ORCH-POOL-3004 ORCH-POOL-3005 "
    "ORCH-POOL-3006 ORCH-POOL-3010"
).split()


def _id(n: int, area: str = "") -> str:
    return "-".join(["ORCH", *([area] if area else []), f"{n:04d}"])


def _repo(tmp_path: Path, specs: dict[str, str], code: dict[str, str] | None = None) -> Path:
    for name, text in specs.items():
        path = tmp_path / ".specs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    for name, text in (code or {}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


# ---------------------------------------------------------------- the real specs


def test_specs_define_every_id_the_code_relies_on(spec_extract: ModuleType) -> None:
    defined = spec_extract.collect()
    assert not [i for i in REQUIRED_IDS if i not in defined]


def test_every_spec_file_defines_requirements(spec_extract: ModuleType) -> None:
    defined = spec_extract.collect()
    for path in spec_extract.spec_files():
        assert any(r.spec.endswith(path.name) for r in defined.values()), path.name


def test_every_cited_id_is_defined(spec_extract: ModuleType) -> None:
    """ORCH-0005: a typo in a cited ID (code, tests, contracts, tools) fails here."""
    unknown = spec_extract.extract().unknown
    assert not unknown, "IDs cited but not defined in .specs/: " + ", ".join(
        f"{req_id} in {sorted(files)}" for req_id, files in sorted(unknown.items())
    )


def test_two_runs_are_identical(spec_extract: ModuleType) -> None:
    first = spec_extract.outputs()
    assert first == spec_extract.outputs()
    for text in first.values():
        doc = yaml.safe_load(text)
        ids = [r["id"] for r in doc["requirements"]]
        assert ids == sorted(ids)
        for r in doc["requirements"]:
            assert r["level"] in {"MUST", "SHOULD", "MAY"}
            assert r["cited_by"] == sorted(r["cited_by"])


def test_wrapper_is_executable(repo_root: Path) -> None:
    assert os.access(repo_root / "tools" / "spec-extract", os.X_OK)


# ---------------------------------------------------------------- the format


def test_write_check_and_drift(spec_extract: ModuleType, tmp_path: Path) -> None:
    a, b = _id(100), _id(101)
    root = _repo(
        tmp_path,
        {"10-x.md": f"# X\n\n## Part\n\n- [{b}] It SHOULD work.\n- [{a}] It MUST NOT fail.\n"},
        {"packages/p/mod.py": f"# {a}\n", "tools/t.py": f"# {a}..{b}\n"},
    )
    assert spec_extract.main(["--root", str(root)]) == 0
    assert spec_extract.main(["--check", "--root", str(root)]) == 0
    doc = yaml.safe_load((root / "requirements" / "10-x.yaml").read_text(encoding="utf-8"))
    assert doc["spec"] == ".specs/10-x.md"
    assert doc["requirements"] == [
        {
            "id": a,
            "level": "MUST",
            "section": "Part",
            "text": "It MUST NOT fail.",
            "cited_by": ["packages/p/mod.py", "tools/t.py"],
        },
        {
            "id": b,
            "level": "SHOULD",
            "section": "Part",
            "text": "It SHOULD work.",
            "cited_by": ["tools/t.py"],
        },
    ]
    (root / "packages" / "p" / "mod.py").write_text("# nothing\n", encoding="utf-8")
    assert spec_extract.main(["--check", "--root", str(root)]) == 1
    assert spec_extract.main(["--root", str(root)]) == 0
    assert spec_extract.main(["--check", "--root", str(root)]) == 0


def test_stale_output_is_removed(spec_extract: ModuleType, tmp_path: Path) -> None:
    root = _repo(tmp_path, {"a.md": f"- [{_id(1)}] MUST.\n", "b.md": f"- [{_id(2)}] MAY.\n"})
    assert spec_extract.main(["--root", str(root)]) == 0
    (root / ".specs" / "b.md").unlink()
    assert spec_extract.main(["--check", "--root", str(root)]) == 1
    assert spec_extract.main(["--root", str(root)]) == 0
    assert sorted(p.name for p in (root / "requirements").iterdir()) == ["a.yaml"]


def test_specs_in_subdirectories(spec_extract: ModuleType, tmp_path: Path) -> None:
    """Specs under ``.specs/<dir>/`` are read; their output mirrors the directory, and a
    duplicate ID across directories still fails."""
    root = _repo(
        tmp_path,
        {"a.md": f"- [{_id(1)}] MUST.\n", "metrics/contract.md": f"- [{_id(2)}] MUST b.\n"},
        {"ci/x.py": f"# {_id(2)}\n"},
    )
    assert spec_extract.main(["--root", str(root)]) == 0
    out = root / "requirements" / "metrics" / "contract.yaml"
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert doc["spec"] == ".specs/metrics/contract.md"
    assert doc["requirements"][0]["cited_by"] == ["ci/x.py"]
    assert spec_extract.main(["--check", "--root", str(root)]) == 0
    (root / ".specs" / "metrics" / "contract.md").unlink()
    assert spec_extract.main(["--check", "--root", str(root)]) == 1
    assert spec_extract.main(["--root", str(root)]) == 0
    assert not (root / "requirements" / "metrics").exists()
    (root / ".specs" / "metrics" / "dup.md").write_text(f"- [{_id(1)}] MUST c.\n")
    assert spec_extract.main(["--root", str(root)]) == 1


def test_duplicate_ids_fail(spec_extract: ModuleType, tmp_path: Path) -> None:
    root = _repo(tmp_path, {"a.md": f"- [{_id(7)}] MUST a.\n", "b.md": f"- [{_id(7)}] MUST b.\n"})
    with pytest.raises(spec_extract.SpecError, match="duplicate"):
        spec_extract.collect(root)
    assert spec_extract.main(["--root", str(root)]) == 1
    assert not (root / "requirements").exists()


@pytest.mark.parametrize(
    "line",
    [
        f"- [{_id(3)}] this has no keyword.",
        f"-  [{_id(3)}] MUST have one space.",
        f"* [{_id(3)}] MUST use a dash.",
        f"- [{_id(3)}]MUST have a space after the ID.",
        f"- [{_id(3, 'pool')}] MUST use an upper-case area.",
    ],
)
def test_malformed_requirements_fail(spec_extract: ModuleType, tmp_path: Path, line: str) -> None:
    root = _repo(tmp_path, {"a.md": line + "\n"})
    with pytest.raises(spec_extract.SpecError):
        spec_extract.collect(root)


def test_fenced_blocks_and_prose_define_nothing(spec_extract: ModuleType, tmp_path: Path) -> None:
    text = f"See {_id(9)} in prose.\n\n```text\n- [{_id(9)}] MUST be ignored.\n```\n"
    text += f"- [{_id(9, 'POOL')}] Areas MAY exist.\n"
    root = _repo(tmp_path, {"a.md": text})
    reqs = spec_extract.collect(root)
    assert list(reqs) == [_id(9, "POOL")]
    assert reqs[_id(9, "POOL")].level == "MAY"


def test_citations_ranges_and_unknown_ids(spec_extract: ModuleType) -> None:
    defined = [_id(11), _id(12), _id(14), _id(12, "POOL")]
    text = f"{_id(11)}..{_id(14)} and {_id(12, 'POOL')}..{_id(13)}, {_id(99)}, X{_id(12)}"
    hits, missing = spec_extract.cited_ids(text, defined)
    assert hits == set(defined)
    assert missing == {_id(99)}  # a cross-area range end is not an ID of that area
    hits, missing = spec_extract.cited_ids(f"{_id(11)}..0015", defined)
    assert hits == {_id(11), _id(12), _id(14)}
    assert missing == {_id(15)}


def test_run_reports_cite_nothing(spec_extract: ModuleType, tmp_path: Path) -> None:
    """.specs/00 §1.1: a run's report under a ``reports/`` directory is an output, not a
    test or code: it cites nothing, so a local run cannot change COMPLIANCE.md."""
    root = _repo(
        tmp_path,
        {"a.md": f"- [{_id(21)}] MUST.\n- [{_id(22)}] MUST.\n"},
        {
            "test-harness/chaos/reports/ci-seed7-x.md": f"{_id(21)} {_id(22)}\n",
            "test-harness/chaos/reports/work/y.json": f"{_id(21)}\n",
            "test-harness/chaos/test_x.py": f"# {_id(22)}\n",
        },
    )
    cites = spec_extract.extract(root).citations
    assert cites[_id(21)] == set()
    assert cites[_id(22)] == {"test-harness/chaos/test_x.py"}


def test_committed_requirements_are_current(repo_root: Path) -> None:
    """ORCH-6004: requirements/*.yaml matches the specs and the citations in the tree."""
    proc = subprocess.run(
        [str(repo_root / "tools" / "spec-extract"), "--check"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
