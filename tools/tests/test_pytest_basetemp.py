"""ORCH-6257: every pytest a test starts in a subprocess gets its own --basetemp
(and, ORCH-6260, runs with plugin autoload off).

Stop 30's CI failed when one standalone run's end-of-session clean-up of the
shared ``pytest-of-<user>`` root met another run writing into it. This test
reads the repository's Python files and fails on any subprocess pytest command
(a list holding ``"-m", "pytest"``, or one spreading a module-level name bound
to such a list) that does not also hold ``"--basetemp"``.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _consts(node: ast.List) -> list[object]:
    return [e.value if isinstance(e, ast.Constant) else None for e in node.elts]


def _starts_pytest(node: ast.List) -> bool:
    c = _consts(node)
    return any(a == "-m" and b == "pytest" for a, b in itertools.pairwise(c))


def unguarded_pytest_commands(source: str) -> list[int]:
    """Line numbers of subprocess pytest command lists without ``--basetemp``."""
    tree = ast.parse(source)
    # module-level names bound to ["...", "-m", "pytest", ...]: a prefix that is spread
    # into other lists is checked where it is spread, any other one where it stands
    bound: dict[str, ast.List] = {}
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and isinstance(stmt.value, ast.List)
            and _starts_pytest(stmt.value)
        ):
            bound |= {t.id: stmt.value for t in stmt.targets if isinstance(t, ast.Name)}
    spread = {
        n.value.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Starred) and isinstance(n.value, ast.Name) and n.value.id in bound
    }
    prefixes = spread
    prefix_nodes = {id(bound[name]) for name in spread}
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.List) or id(node) in prefix_nodes:
            continue
        spreads_prefix = any(
            isinstance(e, ast.Starred) and isinstance(e.value, ast.Name) and e.value.id in prefixes
            for e in node.elts
        )
        if (_starts_pytest(node) or spreads_prefix) and "--basetemp" not in _consts(node):
            bad.append(node.lineno)
    return bad


def _python_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / p for p in out]


def test_every_subprocess_pytest_has_its_own_basetemp() -> None:
    files = _python_files()
    assert len(files) > 100, "git ls-files found too few Python files"
    found = {
        f"{p.relative_to(ROOT)}:{line}"
        for p in files
        for line in unguarded_pytest_commands(p.read_text(encoding="utf-8"))
    }
    assert not found, f"subprocess pytest without --basetemp (ORCH-6257): {sorted(found)}"


def test_the_check_sees_both_shapes_and_the_fix() -> None:
    """The check fails on each shape it looks for, and passes once --basetemp is there."""
    direct = 'import sys\ncmd = [sys.executable, "-m", "pytest", "-q", "t.py"]\n'
    spread = (
        'import sys\nP = [sys.executable, "-m", "pytest"]\n'
        'def f(a):\n    return [*P, "-c", "x.ini", *a]\n'
    )
    assert unguarded_pytest_commands(direct) == [2]
    assert unguarded_pytest_commands(spread) == [4]
    assert unguarded_pytest_commands(direct.replace('"-q"', '"--basetemp", "b"')) == []
    assert unguarded_pytest_commands(spread.replace('"-c"', '"--basetemp", "b", "-c"')) == []
    assert unguarded_pytest_commands('cmd = ["python", "-m", "pip", "install"]\n') == []


def starts_a_pytest(source: str) -> bool:
    """Whether the source holds a subprocess pytest command list (``"-m", "pytest"``)."""
    return any(isinstance(n, ast.List) and _starts_pytest(n) for n in ast.walk(ast.parse(source)))


def test_every_self_test_pytest_turns_plugin_autoload_off() -> None:
    """ORCH-6260: a test file that starts a pytest in a subprocess turns plugin autoload
    off for it (and names the plugins it uses); the standalone installs (tools/standalone.py,
    not a test file) keep it on."""
    tests = [p for p in _python_files() if "tests" in p.relative_to(ROOT).parts]
    starting = [p for p in tests if starts_a_pytest(p.read_text(encoding="utf-8"))]
    assert len(starting) >= 2, starting  # the suite-worker and broken-mock self-tests
    autoloading = [
        str(p.relative_to(ROOT))
        for p in starting
        if "PYTEST_DISABLE_PLUGIN_AUTOLOAD" not in p.read_text(encoding="utf-8")
    ]
    assert not autoloading, f"subprocess pytest with plugin autoload on (ORCH-6260): {autoloading}"
    assert not starts_a_pytest('cmd = ["python", "-m", "pip", "install"]\n')
