"""Fixtures of the metrics contract tests: the lint tool, PromQL names, Prometheus binaries.

``prometheus_tools`` provisions Debian's ``prometheus`` package through
``tools/prometheus_tools.py`` (cached under ``~/.cache/llama-orch/tools``) once
per session; where it cannot be provisioned the tests skip, or fail when
``REQUIRE_REAL_LLAMA=1`` (CI), like the real engines (ORCH-7020).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from llama_orch.testing_engines.llamacpp import real_engine_required

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    module_name = f"llama_orch_tools_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "tools" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(scope="session")
def metrics_lint() -> ModuleType:
    return _load("metrics_lint")


@pytest.fixture(scope="session")
def lint_doc(metrics_lint: ModuleType) -> dict:
    return metrics_lint.load_lint()


@pytest.fixture(scope="session")
def prometheus_tools():
    tools = _load("prometheus_tools")
    try:
        return tools.provision()
    except tools.ProvisionError as exc:
        if real_engine_required():
            pytest.fail(f"cannot provision prometheus/promtool: {exc}")
        pytest.skip(f"cannot provision prometheus/promtool: {exc}")
