"""Every adapter distribution installs alone and passes its tests there (ORCH-4016).

Iterates over ``packages/adapter-*``, so a new adapter is covered without
touching this file. Wheels are built with ``uv build --package X
--no-sources`` and cached per source state under the user cache dir; the
venvs are fresh per run (the uv cache makes them cheap). Real-engine tests
are deselected here: the workspace run already drives them against real
engines; this run proves the packaging.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import ROOT, _load

standalone = _load("standalone")
ADAPTERS = sorted(
    p.name for p in (ROOT / "packages").glob("adapter-*") if (p / "pyproject.toml").is_file()
)


def workspace_closure(name: str, members: dict) -> set[str]:
    out, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n in out or n not in members:
            continue
        out.add(n)
        todo += [standalone.req_name(r) for r in members[n].dependencies]
    return out


@pytest.mark.parametrize("adapter_dir", ADAPTERS)
def test_adapter_installs_alone_and_passes_its_tests(adapter_dir: str, tmp_path: Path) -> None:
    """ORCH-4016, ORCH-3001: wheel + declared dependencies only; entry point
    loads; its own tests (conformance suite included) pass in that venv."""
    members = standalone.workspace_members()
    pkg = standalone.read_package(ROOT / "packages" / adapter_dir)
    assert pkg.entry_points, f"{pkg.name} registers no llama_orch.adapters entry point"
    assert "llama-orch-testing" in {standalone.req_name(r) for r in pkg.test_group}, (
        f"{pkg.name} must declare a [dependency-groups] test group with llama-orch-testing"
    )
    proc, alone = standalone.run_package_tests(pkg, tmp_path, markexpr="not real_engine")
    ours = {n for n in alone if n.startswith("llama-orch-")}
    assert ours == workspace_closure(pkg.name, members), (
        f"installing {pkg.name} alone pulled {sorted(ours)}"
    )
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    core = ROOT / "packages/orchestrator-core/src/llama_orch/core/adapter_api.py"
    assert (site / "llama_orch/core/adapter_api.py").read_bytes() == core.read_bytes(), (
        "llama-orch-core in the venv is not the one built from this workspace"
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{pkg.name} tests failed in a standalone venv:\n{out[-6000:]}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) > 0, out[-3000:]


POLICY_PACKAGES = ("policy-sdk", "policy-host")


@pytest.mark.parametrize("package_dir", POLICY_PACKAGES)
def test_policy_distribution_installs_alone_and_passes_its_tests(
    package_dir: str, tmp_path: Path
) -> None:
    """ORCH-0007, issue #16: the policy SDK needs only llama-orch-core; the host only
    core and the SDK (plus wasmtime); each passes its own tests in that venv."""
    members = standalone.workspace_members()
    pkg = standalone.read_package(ROOT / "packages" / package_dir)
    proc, alone = standalone.run_package_tests(pkg, tmp_path, markexpr="not real_engine")
    ours = {n for n in alone if n.startswith("llama-orch-")}
    assert ours == workspace_closure(pkg.name, members), (
        f"installing {pkg.name} alone pulled {sorted(ours)}"
    )
    if package_dir == "policy-host":
        assert "wasmtime" in alone
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{pkg.name} tests failed in a standalone venv:\n{out[-6000:]}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) > 0, out[-3000:]
