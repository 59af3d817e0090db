"""The example policies of issue #16, built and tested by the project's own code
(ORCH-8580, ORCH-8532, ORCH-0007).

- The C examples in ``examples/policies`` compile with ``llorch-policy build``
  (PyPI ``ziglang``; results cached under the user cache dir by source hash)
  and pass their vectors with ``llorch-policy test``; so does the WAT example.
- A deliberately broken policy fails ``llorch-policy test``, naming the vector.
- ``examples/third-party-policy``, a native policy in its own distribution that
  depends on ``llama-orch-policy-sdk`` alone, passes its tests in its own venv,
  where ``llama-orch-policy-host`` discovers it by entry point.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from llama_orch.policy_sdk.build import cached_build
from llama_orch.policy_sdk.cli import main

from .conftest import ROOT, _load

standalone = _load("standalone")
EXAMPLES = ROOT / "examples" / "policies"
C_EXAMPLES = ("tenant_clamp", "shed_batch", "place_by_label")


@pytest.mark.parametrize("name", C_EXAMPLES)
def test_c_example_builds_and_passes_its_vectors(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.perf_counter()
    wasm = cached_build(EXAMPLES / f"{name}.c")
    built = time.perf_counter() - t0
    assert main(["test", str(wasm), str(EXAMPLES / "vectors" / name)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"[1-9]\d* passed, 0 failed", out), out
    print(f"{name}: build/cache {built:.2f} s, {wasm.stat().st_size} bytes")


def test_wat_example_passes_its_vectors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", str(EXAMPLES / "admit.wat"), str(EXAMPLES / "vectors" / "admit_wat")]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


def test_broken_policy_fails_naming_the_vector(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ORCH-8532: shed at 90 % instead of 75 %: the 75 % vector fails, by name."""
    broken = tmp_path / "shed_batch_broken.c"
    src = (EXAMPLES / "shed_batch.c").read_text()
    broken.write_text(src.replace("#define SHED_PCT 75", "#define SHED_PCT 90"))
    wasm = cached_build(broken, cache_dir=tmp_path / "cache")
    assert main(["test", str(wasm), str(EXAMPLES / "vectors" / "shed_batch")]) == 1
    out = capsys.readouterr().out
    assert "FAIL 02_batch_at_75pct_shed.json" in out, out
    assert "PASS 01_batch_below_75pct.json" in out and "1 failed" in out


def test_third_party_native_policy_in_its_own_venv(tmp_path: Path) -> None:
    """ORCH-0006, ORCH-0007, ORCH-8517: discovered by entry point, run by the host."""
    example = ROOT / "examples" / "third-party-policy"
    pkg = standalone.read_package(example)
    proc, alone = standalone.run_package_tests(pkg, tmp_path)
    assert {n for n in alone if n.startswith("llama-orch-")} == {
        "llama-orch-policy-guest-limit",
        "llama-orch-policy-sdk",
        "llama-orch-core",
    }
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 3, out[-3000:]
