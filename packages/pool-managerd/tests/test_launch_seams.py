"""The seams between pool manager, engine launchers and replica supervisors.

ORCH-4120: one Launcher per engine, chosen from one table; no branching on
the engine kind in the pool manager or the process launcher.
ORCH-4121 / ORCH-4112: the pool manager drives ReplicaSupervisor and the
launcher through public members only.
"""

from __future__ import annotations

import ast
import inspect
import types
from pathlib import Path

from llama_orch.pool_managerd import launchers, pool, supervisor
from llama_orch.pool_managerd.launch_api import Launcher
from llama_orch.pool_managerd.runtimes import LAUNCHABLE_ENGINES, LAUNCHERS, launcher_for


def _tree(module: types.ModuleType) -> ast.Module:
    return ast.parse(Path(inspect.getfile(module)).read_text())


def test_one_launcher_per_engine_from_one_table() -> None:
    """ORCH-4120"""
    assert set(LAUNCHERS) == {"llamacpp-http", "vllm-http", "triton", "tgi-http"}
    assert LAUNCHABLE_ENGINES == frozenset(LAUNCHERS)
    assert len({type(x) for x in LAUNCHERS.values()}) == len(LAUNCHERS)
    for engine, launcher in LAUNCHERS.items():
        assert launcher.engine == engine and launcher_for(engine) is launcher
        assert "env" in launcher.applies
        # The protocol's members, with the protocol's parameter names.
        for name in ("check", "prepare", "plan"):
            want = list(inspect.signature(getattr(Launcher, name)).parameters)[1:]
            assert list(inspect.signature(getattr(launcher, name)).parameters) == want


def test_pool_manager_and_process_launcher_do_not_branch_on_the_engine() -> None:
    """ORCH-4120: no comparison with ``.engine`` in pool.py, launchers.py or supervisor.py."""
    for module in (pool, launchers, supervisor):
        for node in ast.walk(_tree(module)):
            kinds = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)  # not ``engine is None`` (a process)
            if isinstance(node, ast.Compare) and any(isinstance(op, kinds) for op in node.ops):
                sides = [node.left, *node.comparators]
                names = {s.attr for s in sides if isinstance(s, ast.Attribute)}
                assert "engine" not in names, f"{module.__name__}:{node.lineno}"
            if isinstance(node, ast.Match):
                subject = node.subject
                assert not (isinstance(subject, ast.Attribute) and subject.attr == "engine")


def test_no_private_member_of_another_object_is_touched() -> None:
    """ORCH-4121, ORCH-4112: ``x._name`` only on ``self`` (ruff SLF001's rule, without ruff)."""
    for module in (pool, launchers, supervisor):
        for node in ast.walk(_tree(module)):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                owner = node.value
                assert isinstance(owner, ast.Name) and owner.id in {"self", "cls"}, (
                    f"{module.__name__}:{node.lineno}: .{node.attr}"
                )
