"""The shared-store operations guide's example configs are valid (ORCH-2555).

Every ``yaml`` block of ``docs/operations/state-store.md`` with a ``state:`` section
must be accepted by the config structs (``parse_config``) and by the generated
JSON Schema, and must name a server backend, so the page cannot drift from the
config it documents.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import msgspec
from llama_orch.core.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "operations" / "state-store.md"
SCHEMA = ROOT / "contracts" / "config" / "config.schema.json"


def _examples() -> list[str]:
    blocks = re.findall(r"```yaml\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.DOTALL)
    return [b for b in blocks if re.search(r"^state:", b, re.MULTILINE)]


def test_every_example_config_is_valid() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    examples = _examples()
    assert len(examples) >= 3, "the guide shows a full config, Sentinel and a managed service"
    kinds = set()
    for doc in examples:
        cfg = parse_config(doc)  # the structs accept it (ORCH-2520, ORCH-2550, ORCH-2553)
        validator.validate(msgspec.yaml.decode(doc))  # ... and so does the schema
        assert cfg.state is not None and cfg.state.backend == "valkey", doc
        kinds.add("sentinel" if cfg.state.sentinel else "url" if cfg.state.url else "embedded")
        assert cfg.state.durability is not None, doc  # every example shows the 202's wait
    assert {"sentinel", "url"} <= kinds


def test_a_wrong_example_would_fail() -> None:
    """The check above can fail: the schema and the structs refuse what the guide
    must not show (both `url` and `sentinel`; durability on `memory`)."""
    bad = [
        "state: {backend: valkey, url: 'redis://x:1/0',"
        " sentinel: {addresses: ['s:1'], master_name: m}}",
        "state: {backend: memory, durability: {wait_replicas: 1}}",
        "state: {backend: valkey, durability: {wait_replica: 1}}",
    ]
    for doc in bad:
        try:
            parse_config(doc)
        except (msgspec.ValidationError, ValueError):
            continue
        raise AssertionError(f"accepted: {doc}")
