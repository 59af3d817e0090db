"""The config JSON Schema is generated from the msgspec structs and never drifts (ORCH-1004)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import jsonschema
import msgspec
import pytest
from llama_orch.core.config import Config, PoolConfig, parse_config

SCHEMA = Path(__file__).resolve().parents[2] / "contracts" / "config" / "config.schema.json"


def _schema() -> dict[str, object]:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def test_committed_schema_matches_the_structs(gen_config_schema: ModuleType) -> None:
    diff = gen_config_schema.drift()
    assert diff == "", (
        "contracts/config/config.schema.json drifted from llama_orch.core.config; "
        "run `uv run python tools/gen_config_schema.py`\n" + diff
    )


def test_check_mode_exit_codes(gen_config_schema: ModuleType, tmp_path: Path) -> None:
    stale = tmp_path / "config.schema.json"
    stale.write_text("{}\n", encoding="utf-8")
    assert gen_config_schema.main(["--check", "--output", str(stale)]) == 1
    assert gen_config_schema.main(["--output", str(stale)]) == 0
    assert gen_config_schema.main(["--check", "--output", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == SCHEMA.read_text(encoding="utf-8")


def test_rendering_is_deterministic(gen_config_schema: ModuleType) -> None:
    first = gen_config_schema.render()
    assert first == gen_config_schema.render()
    assert first.endswith("}\n")


def test_schema_accepts_configs_the_structs_accept() -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    validator.check_schema(_schema())
    cfg = Config(allow_cpu_inference=True, pools=[PoolConfig(id="default", slots=2)])
    validator.validate(json.loads(msgspec.json.encode(cfg)))
    validator.validate({})
    doc = (
        "allow_cpu_inference: true\n"
        "pools:\n  - id: smol\n    model: pypi:smollm2-135m-instruct-q4_1\n"
    )
    parse_config(doc)  # the struct accepts it ...
    validator.validate(msgspec.yaml.decode(doc))  # ... and so does the schema


@pytest.mark.parametrize(
    "doc",
    [
        {"admission": {"queue_capacity": 0}},
        {"admission": {"full_policy": "random"}},
        {"server": {"port": 70000}},
        {"pools": [{"id": "Bad Id"}]},
        {"pools": [{"engine": "mock"}]},  # id is required
        {"unknown_key": 1},  # ORCH-1705: unknown keys are rejected
    ],
)
def test_schema_and_structs_reject_the_same_mistakes(doc: dict[str, object]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(_schema()).validate(doc)
    with pytest.raises(msgspec.ValidationError):
        parse_config(json.dumps(doc), fmt="json")
