"""BDD features (pytest-bdd) driving the real HTTP API: the fixtures, and the step
modules whose definitions pytest-bdd registers as fixtures of the module that declares
them (star-imported here so that every feature of this directory sees them).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_bdd import parsers

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # --import-mode=importlib: load the step modules by folder
    sys.path.insert(0, str(HERE))

from _steps_core import *  # noqa: E402, F403
from _steps_journeys import *  # noqa: E402, F403
from _steps_ops import *  # noqa: E402, F403
from _world import STEP_DEFS, World, http  # noqa: E402


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    try:
        yield w
    finally:
        if w.orch is not None:
            for tid in w.background:  # leave no long task running at shutdown
                http("POST", f"{w.url}/v1/tasks/{tid}/cancel")
            w.orch.stop()


@pytest.fixture
def step_defs() -> list[tuple[str, parsers.StepParser]]:
    """Every step definition of this directory as (kind, parser)."""
    return STEP_DEFS
