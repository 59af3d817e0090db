"""ORCH-1004 config structs; ORCH-3001/3002 adapter discovery through entry points."""

from __future__ import annotations

import msgspec
import pytest
from llama_orch.core.adapter_api import AdapterLoadError, WorkerAdapter, load_adapter_class
from llama_orch.core.config import parse_config


def test_yaml_config_with_defaults():
    cfg = parse_config("allow_cpu_inference: true\npools:\n  - id: default\n")
    assert cfg.allow_cpu_inference and cfg.pools[0].engine == "llamacpp-http"
    assert cfg.admission.full_policy == "reject" and cfg.server.host == "127.0.0.1"


@pytest.mark.parametrize(
    "doc,needle",
    [
        ("pools:\n  - id: a\n    replicaz: 2\n", "replicaz"),
        ("admission:\n  full_policy: yolo\n", "full_policy"),
        ("pools:\n  - id: a\n  - id: a\n", "unique"),
        ("pools:\n  - id: 'Bad Id'\n", "id"),
    ],
)
def test_config_errors_are_loud(doc: str, needle: str):
    with pytest.raises(msgspec.ValidationError, match=needle):
        parse_config(doc)


def test_missing_adapter_is_a_typed_error():
    with pytest.raises(AdapterLoadError, match="no adapter registered for engine 'nope'"):
        load_adapter_class("nope")


def test_installed_adapters_load_by_entry_point_name():
    for name in ("mock", "llamacpp-http"):
        cls = load_adapter_class(name)
        assert issubclass(cls, WorkerAdapter) and cls.engine == name
