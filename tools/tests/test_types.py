"""Issue #14: every distribution's ``src`` passes ``mypy --strict`` (config: root pyproject.toml).

The cache lives under the user cache directory (``~/.cache/llama-orch/mypy``) so a
warm run re-checks only what changed; mypy revalidates cached modules by content
hash, so another checkout of the same sources reuses it too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llama-orch" / "mypy"
SOURCES = sorted(ROOT.glob("packages/*/src/**/*.py"))
# `# type: ignore[code]` followed by `# why`, or with the why on the comment line above
_IGNORE = re.compile(r"#\s*type:\s*ignore(\[[^\]]*\])?(.*)$")


def test_mypy_strict_passes_over_every_src() -> None:
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    assert mypy, "mypy is a dev dependency and must be installed"
    proc = subprocess.run(
        [mypy, "--strict", "--cache-dir", str(CACHE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the `files` setting reaches every module of every distribution: none is skipped
    found = re.search(r"no issues found in (\d+) source files", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert int(found.group(1)) == len(SOURCES), (found.group(0), len(SOURCES))


def test_every_type_ignore_names_its_code_and_reason() -> None:
    bare = []
    for path in SOURCES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            m = _IGNORE.search(line)
            if m is None:
                continue
            code, rest = m.group(1), m.group(2).strip()
            above = lines[n - 1].strip() if n else ""
            if not code or not (rest.startswith("#") or above.startswith("#")):
                bare.append(f"{path.relative_to(ROOT)}:{n + 1}: {line.strip()}")
    assert not bare, "a `# type: ignore[code]` needs a `# reason`:\n" + "\n".join(bare)
