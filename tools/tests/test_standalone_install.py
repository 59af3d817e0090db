"""Every distribution installs alone and passes its tests there (ORCH-4016, ORCH-4111).

Iterates over ``packages/*``, so a new distribution is covered without
touching this file. Wheels are built with ``uv build --package X
--no-sources`` and cached per source state under the user cache dir; the
venvs are fresh per run (the uv cache makes them cheap). In that venv the
package alone must import every module it ships (and load its adapters by
entry-point name) before its ``test`` group is added. Real-engine tests are
deselected here: the workspace run already drives them against real
engines; this run proves the packaging.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, STANDALONE_BATCH, _load, standalone_selected

standalone = _load("standalone")
PACKAGES = sorted(p.name for p in (ROOT / "packages").glob("*") if (p / "pyproject.toml").is_file())
# What only tests may ship: no daemon or library wheel carries test code (ORCH-4110).
_PYTEST = re.compile(rb"^\s*(import|from) pytest\b", re.M)
_TEST_CODE = re.compile(r"(^|/)(tests?|conftest\.py|testing_engines)(/|$)|(^|/)test_[^/]*\.py$")


def workspace_closure(name: str, members: dict) -> set[str]:
    out, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n in out or n not in members:
            continue
        out.add(n)
        todo += [standalone.req_name(r) for r in members[n].dependencies]
    return out


Runs = Callable[[str], tuple[Any, dict[str, str], Path, Any]]


@pytest.fixture(scope="module")
def standalone_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runs]:
    """Every selected package's standalone run, two at a time, in a process of its own
    (``standalone.BatchProcess``). In one process the batch started with the run's first test
    and ran beside the tests without a real engine (ORCH-6264); on a worker it starts here, in
    the ``alone`` unit. A case takes its package's run, then runs the package's ``alone`` gates
    in that venv, alone."""
    batch: Any = request.config.stash.get(STANDALONE_BATCH, None)
    own = batch is None
    if own:
        batch = standalone.BatchProcess(
            standalone_selected(request.session), tmp_path_factory.mktemp("standalone")
        )

    def result(name: str) -> tuple[Any, dict[str, str], Path, Any]:
        proc, alone, d = batch.result(name)
        return proc, alone, d, batch.gates(name)

    try:
        yield result
    finally:
        if own:
            batch.stop()


# The cases share a two-thread pool (above): a case whose run is queued behind the
# others waits for them too, up to about half of all the standalone runs (228 s on
# an idle machine in session 16, more than 300 s on CI's machine in stop 31). The
# hang guard for each run is the subprocess timeout in tools/standalone.py.
@pytest.mark.alone  # every package's non-real timing gates run in its case (ORCH-6258, ORCH-6264)
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("package_dir", PACKAGES)
def test_distribution_installs_alone_and_passes_its_tests(
    package_dir: str, standalone_runs: Runs
) -> None:
    """ORCH-4016, ORCH-4111, ORCH-3001: wheel + declared dependencies only;
    every module imports; entry points load; its own tests pass in that venv."""
    members = standalone.workspace_members()
    pkg = standalone.read_package(ROOT / "packages" / package_dir)
    assert pkg.test_group, f"{pkg.name} must declare a [dependency-groups] test group"
    if package_dir.startswith("adapter-") and package_dir != "adapter-http":
        assert pkg.entry_points, f"{pkg.name} registers no llama_orch.adapters entry point"
        assert "llama-orch-testing" in {standalone.req_name(r) for r in pkg.test_group}, (
            f"{pkg.name} must run the conformance suite (llama-orch-testing in its test group)"
        )
    proc, alone, tmp_path, gates = standalone_runs(package_dir)
    ours = {n for n in alone if n.startswith("llama-orch-")}
    assert ours == workspace_closure(pkg.name, members), (
        f"installing {pkg.name} alone pulled {sorted(ours)}"
    )
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    core = ROOT / "packages/core/src/llama_orch/core/adapter_api.py"
    assert (site / "llama_orch/core/adapter_api.py").read_bytes() == core.read_bytes(), (
        "llama-orch-core in the venv is not the one built from this workspace"
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{pkg.name} tests failed in a standalone venv:\n{out[-6000:]}"
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) > 0, out[-3000:]
    if gates is not None:  # 5: none selected (the package's gates all need a real engine)
        out = gates.stdout + gates.stderr
        assert gates.returncode in (0, 5), f"{pkg.name}'s alone gates failed alone:\n{out[-6000:]}"
        assert gates.returncode == 5 or re.search(r"[1-9]\d* passed", out), out[-3000:]


@pytest.mark.parametrize("package_dir", [p for p in PACKAGES if not p.startswith("testing")])
def test_product_wheels_ship_no_test_code(package_dir: str) -> None:
    """ORCH-4110: fixtures, engine venvs and test apps live in test-support
    distributions (``llama-orch-testing``, ``llama-orch-testing-engines``)."""
    pkg = standalone.read_package(ROOT / "packages" / package_dir)
    with zipfile.ZipFile(standalone.build_wheel(pkg)) as whl:
        sources = {n: whl.read(n) for n in whl.namelist() if n.endswith(".py")}
    shipped = [n for n in sources if _TEST_CODE.search(n) or n.endswith("_pytriton_app.py")]
    assert not shipped, f"{pkg.name}'s wheel ships test code: {shipped}"
    uses_pytest = [n for n, text in sources.items() if _PYTEST.search(text)]
    assert not uses_pytest, f"{pkg.name}'s wheel imports pytest in {uses_pytest}"
