"""The shape of orchestratord's task path (ORCH-2420..2423), read from its source.

Cheap static checks (AST, no daemon): they fail when a mixin, a reach into
another object's private members, a 600-line module, a nested closure in a
task run, or a sleep-polling wait on task state comes back.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from llama_orch.orchestratord import admission, dispatch, ending, runner, stored

SRC = Path(admission.__file__).parent
TESTS = Path(__file__).parent


def _modules() -> list[Path]:
    return sorted(SRC.glob("*.py"))


def test_no_mixin_and_no_reach_into_private_members() -> None:
    """ORCH-2420: no class borrows its host's attributes, and no module touches a
    ``_private`` member of another object (``self._x`` and ``cls._x`` only)."""
    found: list[str] = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                found += [
                    f"{path.name}:{node.lineno} {node.name}({ast.unparse(b)})"
                    for b in node.bases
                    if "Mixin" in ast.unparse(b)
                ]
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


@pytest.mark.parametrize(
    "cls",
    [
        admission.Admission,
        dispatch.Dispatcher,
        runner.Runner,
        runner.TaskRun,
        ending.Ending,
        stored.StoreBridge,
    ],
)
def test_each_step_names_its_dependencies(cls: type) -> None:
    """ORCH-2420: each step's constructor names its collaborators; none takes the
    orchestrator to reach into it."""
    params = inspect.signature(cls.__init__).parameters
    assert len(params) > 1
    annotations = " ".join(str(p.annotation) for p in params.values())
    assert "Orchestrator" not in annotations, annotations


def test_a_task_run_is_named_steps() -> None:
    """ORCH-2421: one run is an object of short named methods, no nested closure."""
    tree = ast.parse(inspect.getsource(runner.TaskRun))
    (cls,) = tree.body
    assert isinstance(cls, ast.ClassDef)
    methods = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    names = {m.name for m in methods}
    assert {"__call__", "_request", "_stream", "_on_token", "_on_finished", "_announce"} <= names
    assert {"_complete", "_on_cancelled", "_on_error"} <= names
    for m in methods:
        nested = [
            n
            for n in ast.walk(m)
            if n is not m and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        ]
        assert not nested, f"TaskRun.{m.name} nests a function"
        assert m.end_lineno is not None and m.end_lineno - m.lineno < 60, m.name


def test_modules_stay_within_600_lines() -> None:
    """ORCH-2422 (STYLE 7)."""
    long = {p.name: n for p in _modules() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


_TASK_STATE = (".state", ".terminal", ".tokens_out", ".replica_id", '["state"]')


def _polls_task_state(loop: ast.AST) -> bool:
    text = ast.unparse(loop)
    sleeps = "asyncio.sleep(" in text or "time.sleep(" in text
    reads_task = ("orch.get(" in text or "tasks.get(" in text) and any(
        s in text for s in _TASK_STATE
    )
    return sleeps and reads_task


def test_in_process_tests_await_task_state() -> None:
    """ORCH-2423: no test loop (or sleeping ``_until`` helper) re-reads a task's state
    between sleeps; tests await ``Running.until``/``until_tokens``/``settled``."""
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [
            f"{path.name}:{n.lineno}"
            for n in ast.walk(tree)
            if isinstance(n, (ast.For, ast.AsyncFor, ast.While)) and _polls_task_state(n)
        ]
        found += [  # a sleeping helper handed a predicate on a task
            f"{path.name}:{n.lineno}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
            and ast.unparse(n.func) == "_until"
            and _polls_task_state(ast.parse("asyncio.sleep(0)\n" + ast.unparse(n)))
        ]
    assert not found, found
