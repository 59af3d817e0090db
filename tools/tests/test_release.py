"""Release gates of issue #22: one version, changelog, license, build-all, plans.

Proves ORCH-6200..6204 and ORCH-6206.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, _load

bump_version = _load("bump_version")
build_all = _load("build_all")


def _packages() -> list[Path]:
    return sorted(p.parent for p in ROOT.glob("packages/*/pyproject.toml"))


# ---------------------------------------------------------------- ORCH-6200/6201 versions


def test_one_release_version_everywhere() -> None:
    """ORCH-6200: packages, OpenAPI info.version, the capabilities const and API_VERSION."""
    found = bump_version.found_versions()
    assert len(found) >= len(_packages()) + 1 + 3 + 1  # root, packages, 3 documents, api.py
    assert bump_version.mismatches() == []
    from llama_orch.core.api import API_VERSION

    assert API_VERSION == bump_version.release_version()


def test_bump_rewrites_every_place_and_check_sees_drift(tmp_path: Path) -> None:
    """ORCH-6200: the tool writes every place; --check fails on one disagreeing file."""
    for rel in ["pyproject.toml", bump_version.API_PY.as_posix()]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    for p in _packages():
        (tmp_path / "packages" / p.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p / "pyproject.toml", tmp_path / "packages" / p.name / "pyproject.toml")
    shutil.copytree(ROOT / "contracts" / "openapi", tmp_path / "contracts" / "openapi")
    assert bump_version.main(["--check", "--root", str(tmp_path)]) == 0
    assert bump_version.main(["9.8.7", "--root", str(tmp_path)]) == 0
    assert set(bump_version.found_versions(tmp_path).values()) == {"9.8.7"}
    control = (tmp_path / "contracts/openapi/control.yaml").read_text()
    assert "const: 9.8.7" in control and "const: Bearer" not in control
    one = tmp_path / "packages" / _packages()[0].name / "pyproject.toml"
    one.write_text(one.read_text().replace('version = "9.8.7"', 'version = "9.8.6"'))
    assert bump_version.main(["--check", "--root", str(tmp_path)]) == 1
    with pytest.raises(ValueError):
        bump_version.bump("1.0", tmp_path)


# ---------------------------------------------------------------- ORCH-6202 changelog


def test_changelog_starts_with_the_release_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"(?m)^## \[?([0-9]+\.[0-9]+\.[0-9]+)\]?", text)
    assert versions and versions[0] == bump_version.release_version(), versions
    assert len(versions) == len(set(versions))
    first = text.split("\n## ", 2)[1]
    subsections = re.findall(r"(?m)^### (.+)$", first)
    assert subsections and subsections[0].startswith("Breaking"), subsections


# ---------------------------------------------------------------- ORCH-6203 license


def test_license_is_apache_and_every_distribution_says_so() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    for p in _packages():
        project = tomllib.loads((p / "pyproject.toml").read_text())["project"]
        assert project.get("license") == "Apache-2.0", p.name
        # hatchling puts the package directory's LICENSE into the wheel and sdist
        assert (p / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes(), p.name
    for doc in sorted((ROOT / "contracts" / "openapi").glob("*.yaml")):
        info = yaml.safe_load(doc.read_text(encoding="utf-8"))["info"]
        assert info["license"] == {"name": "Apache-2.0", "identifier": "Apache-2.0"}, doc.name


# ---------------------------------------------------------------- ORCH-6204 build all


def test_every_distribution_builds_and_installs_together(image_install: dict[str, Path]) -> None:
    """ORCH-6204: wheel + sdist of every packages/*; all wheels in one fresh venv (the
    Dockerfile's build step, run by the ``image_install`` fixture); the three console
    scripts answer --help from it."""
    dists = build_all.distributions()
    assert {d.name for d in dists} >= {
        "llama-orch-core",
        "llama-orch-orchestratord",
        "llama-orch-pool-managerd",
        "llama-orch-cli",
    }
    built = sorted(p.name for p in image_install["dist"].iterdir() if not p.name.startswith("."))
    want = sorted(
        [f"{d.stem}-py3-none-any.whl" for d in dists] + [f"{d.stem}.tar.gz" for d in dists]
    )
    assert built == want
    bindir = image_install["venv"] / "bin"
    listed = subprocess.run(
        ["uv", "pip", "list", "--python", str(bindir / "python"), "--format", "freeze"],
        capture_output=True,
        text=True,
        check=True,
        env=build_all._env(),
    ).stdout
    installed = dict(line.split("==", 1) for line in listed.split() if "==" in line)
    for d in dists:
        assert installed.get(d.name) == d.version, f"{d.name} not installed from its wheel"
    # build_all ran `<command> --help` from the venv (it raises when one fails)
    said = (image_install["tmp"] / "build_all.out").read_text()
    for name in build_all.SMOKE_COMMANDS:
        assert (bindir / name).is_file(), name
        assert re.search(rf"^{name} --help: ok \(usage: {name} ", said, re.MULTILINE), said
    # the installed code is the workspace's, not something else of the same name
    site = next((image_install["venv"] / "lib").glob("python3*/site-packages"))
    api = "llama_orch/core/api.py"
    assert (site / api).read_bytes() == (ROOT / "packages/core/src" / api).read_bytes()


def test_build_fails_when_a_distribution_is_missing(tmp_path: Path, monkeypatch) -> None:
    """The completeness check can fail: a package the glob finds but uv did not build
    (uv is replaced by a builder that builds every package but the ghost)."""
    real = build_all.distributions()
    ghost = build_all.Dist("llama-orch-ghost", real[0].version, ())
    monkeypatch.setattr(build_all, "distributions", lambda root=ROOT: [*real, ghost])

    def fake_uv(cmd: list[str], what: str, cwd: Path = ROOT) -> str:
        out = Path(cmd[cmd.index("-o") + 1])
        for d in real:
            with zipfile.ZipFile(out / f"{d.stem}-py3-none-any.whl", "w") as zf:
                zf.writestr(f"{d.stem}.dist-info/licenses/LICENSE", "x")
            with tarfile.open(out / f"{d.stem}.tar.gz", "w:gz") as tf:
                info = tarfile.TarInfo(f"{d.stem}/LICENSE")
                tf.addfile(info, io.BytesIO(b""))
        return ""

    monkeypatch.setattr(build_all, "_run", fake_uv)
    with pytest.raises(RuntimeError, match="llama-orch-ghost: 0 wheels") as err:
        build_all.build(tmp_path / "dist")
    assert "llama-orch-core" not in str(err.value)


# ---------------------------------------------------------------- ORCH-6206 plans


def test_todo_links_into_plan_resolve() -> None:
    plans = sorted((ROOT / ".plan").glob("*.md"))
    assert plans, ".plan/ holds no plan"
    todo = (ROOT / "TODO.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((\.plan/[^)#\s]+)", todo))
    assert linked, "TODO.md links to no plan"
    for rel in linked:
        assert (ROOT / rel).is_file(), rel
    # every plan is linked from the tracker (no orphan plans)
    assert {p.relative_to(ROOT).as_posix() for p in plans} <= linked | {".plan/README.md"}


# ---------------------------------------------------------------- ORCH-6205 compliance


def test_compliance_is_generated_and_its_drift_fails(tmp_path: Path, capsys) -> None:
    """ORCH-6205: requirement → tests → code; --check fails when COMPLIANCE.md is stale."""
    spec_extract = _load("spec_extract")
    rid = "-".join(["ORCH", "0042"])  # assembled so this file cites no undefined ID
    (tmp_path / ".specs").mkdir()
    (tmp_path / ".specs" / "a.md").write_text(f"## S\n\n- [{rid}] It MUST work.\n")
    for rel in ("packages/p/src/mod.py", "packages/p/tests/test_mod.py", "contracts/x.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rid}\n")
    assert spec_extract.main(["--root", str(tmp_path)]) == 0
    text = (tmp_path / "COMPLIANCE.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {rid} "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == [
        rid,
        "MUST",
        "[packages/p/tests/test_mod.py](packages/p/tests/test_mod.py)",
        "[packages/p/src/mod.py](packages/p/src/mod.py)",
        "[contracts/x.yaml](contracts/x.yaml)",
    ]
    assert "0 MUST requirement(s) cited by no test" in text
    assert spec_extract.main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / "packages/p/tests/test_mod.py").write_text("# no citation\n")
    capsys.readouterr()
    assert spec_extract.main(["--check", "--root", str(tmp_path)]) == 1
    assert "COMPLIANCE.md is out of date" in capsys.readouterr().err
    assert (ROOT / "COMPLIANCE.md").read_text() == spec_extract.all_outputs()[
        ROOT / "COMPLIANCE.md"
    ]
