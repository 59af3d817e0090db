"""The documentation site builds in strict mode; its references are generated (issue #22).

Proves ORCH-6210, ORCH-6211 and ORCH-6212.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from .conftest import ROOT, _load

gen_docs = _load("gen_docs")
HOOKS = ROOT / "tools" / "mkdocs_hooks.py"


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
    )


def _nav_pages(nav: list) -> list[str]:
    out: list[str] = []
    for item in nav:
        if isinstance(item, str):
            out.append(item)
        else:
            for value in item.values():
                out += [value] if isinstance(value, str) else _nav_pages(value)
    return out


def test_site_builds_strict(tmp_path: Path) -> None:
    """ORCH-6210: `mkdocs build --strict` of the real site; every nav page is built, the
    adapter guide is included from .docs/, repository links become repository paths."""
    proc = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    on_disk = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(p for p in pages if p in on_disk) == on_disk  # no page left out of the nav
    for page in pages:
        stem = page.removesuffix(".md")
        html = tmp_path / "site" / ("index.html" if stem == "index" else f"{stem}/index.html")
        assert html.is_file(), page
    guide = (tmp_path / "site/guides/write-your-own-adapter/index.html").read_text()
    source = (ROOT / ".docs/write-your-own-adapter.md").read_text()
    first_sentence = source.splitlines()[2].split(" a Python class")[
        0
    ]  # "A llama-orch worker adapter is"
    assert first_sentence in guide
    assert "<code>examples/third-party-adapter/README.md</code>" in guide
    home = (tmp_path / "site/index.html").read_text()
    assert 'href="guides/write-your-own-adapter/"' in home  # a link to .docs/ becomes the page
    kube = (tmp_path / "site/operations/kubernetes/index.html").read_text()
    assert "<code>deploy/kubernetes</code>" in kube and "<code>Dockerfile</code>" in kube


def _site(tmp_path: Path, pages: dict[str, str], nav: list[str]) -> Path:
    (tmp_path / "docs").mkdir(parents=True)
    for name, text in pages.items():
        (tmp_path / "docs" / name).write_text(textwrap.dedent(text))
    (tmp_path / "README.md").write_text("# a repository file\n")
    config = {
        "site_name": "t",
        "docs_dir": "docs",
        "hooks": [str(HOOKS)],
        "nav": nav,
        "validation": {"nav": {"omitted_files": "warn"}, "links": {"not_found": "warn"}},
    }
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    return tmp_path / "mkdocs.yml"


def test_broken_links_and_unlisted_pages_fail_the_build(tmp_path: Path) -> None:
    """ORCH-6210: a broken page link, a link to a missing repository file and a page
    missing from the nav each fail the strict build; a good repository link does not."""
    good = _site(
        tmp_path / "good",
        {"index.md": "# Home\n\n[readme](../README.md) and [page](b.md)\n", "b.md": "# B\n"},
        ["index.md", "b.md"],
    )
    proc = _mkdocs(good, tmp_path / "good-site")
    assert proc.returncode == 0, proc.stderr
    assert "(<code>README.md</code>)" in (tmp_path / "good-site/index.html").read_text()
    bad = _site(
        tmp_path / "bad",
        {
            "index.md": "# Home\n\n[gone](missing.md) [nowhere](../no/such/file.md)\n",
            "orphan.md": "# Not in the nav\n",
        },
        ["index.md"],
    )
    proc = _mkdocs(bad, tmp_path / "bad-site")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "missing.md" in out
    assert "../no/such/file.md: no such file in the repository" in out
    assert "orphan.md" in out


def test_generated_references_are_current() -> None:
    """ORCH-6211: docs/reference/*.md equal a fresh render of the schema and the lint file."""
    assert gen_docs.main(["--check"]) == 0, "run: python3 tools/gen_docs.py"


def test_references_cover_the_sources_and_drift_fails(tmp_path: Path, capsys) -> None:
    """ORCH-6211: every config field and every metric is documented; changing the schema
    or the lint file makes the check fail."""
    sources = (gen_docs.SCHEMA, gen_docs.LINT, gen_docs.CONFIG_PY)
    for rel in (*sources, gen_docs.CONFIG_PAGE, gen_docs.METRICS_PAGE):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    assert gen_docs.main(["--check", "--root", str(tmp_path)]) == 0
    schema = json.loads((tmp_path / gen_docs.SCHEMA).read_text())
    lint = json.loads((tmp_path / gen_docs.LINT).read_text())
    config_page = (tmp_path / gen_docs.CONFIG_PAGE).read_text()
    for name, struct in schema["$defs"].items():
        section = config_page.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for field in struct.get("properties", {}):
            assert f"| `{field}` |" in section, f"{name}.{field} missing"
    metrics_page = (tmp_path / gen_docs.METRICS_PAGE).read_text()
    for metric in lint["metrics"]:
        assert f"| `{metric}` |" in metrics_page

    schema["$defs"]["AdmissionConfig"]["properties"]["queue_capacity"]["default"] = 65
    (tmp_path / gen_docs.SCHEMA).write_text(json.dumps(schema))
    capsys.readouterr()
    assert gen_docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert "configuration.md is stale" in capsys.readouterr().err
    shutil.copy(ROOT / gen_docs.SCHEMA, tmp_path / gen_docs.SCHEMA)

    # the notes column comes from the comments beside the fields in config.py
    assert "| queued tasks per pool, all priorities (ORCH-1101) |" in config_page
    config_py = tmp_path / gen_docs.CONFIG_PY
    config_py.write_text(config_py.read_text().replace("queued tasks per pool", "tasks per pool"))
    assert gen_docs.main(["--check", "--root", str(tmp_path)]) == 1
    shutil.copy(ROOT / gen_docs.CONFIG_PY, config_py)
    capsys.readouterr()

    lint["metrics"]["queue_depth_renamed"] = lint["metrics"].pop("queue_depth")
    (tmp_path / gen_docs.LINT).write_text(json.dumps(lint))
    assert gen_docs.main(["--check", "--root", str(tmp_path)]) == 1
    assert "metrics.md is stale" in capsys.readouterr().err
    assert gen_docs.main(["--root", str(tmp_path)]) == 0
    assert "queue_depth_renamed" in (tmp_path / gen_docs.METRICS_PAGE).read_text()


# Features that do not exist yet; a page that names one must call it planned and link
# the plan or the tracker (ORCH-6212).
PLANNED = {
    "in store mode": "features not applied with a shared state store yet",
}


def test_pages_that_name_missing_features_call_them_planned() -> None:
    """ORCH-6212: every paragraph naming a feature of the wave-2 plan says it is planned
    and links to the plan or TODO.md."""
    checked = 0
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for paragraph in re.split(r"\n\s*\n", page.read_text(encoding="utf-8")):
            if not any(name in paragraph for name in PLANNED):
                continue
            checked += 1
            where = f"{page.relative_to(ROOT)}: {paragraph[:80]!r}"
            assert re.search(r"\bplanned\b", paragraph, re.IGNORECASE), where
            assert re.search(r"\]\([./]*(\.plan/wave-2\.md|TODO\.md)", paragraph), where
    assert checked >= 2
