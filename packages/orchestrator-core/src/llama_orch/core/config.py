"""Configuration structs for orchestratord and the embedded pool manager.

These msgspec structs are the single source of the config schema:
``tools/gen_config_schema.py`` writes ``contracts/config/config.schema.json``
from them, and a test fails when the committed schema drifts (ORCH-1004).
Unknown keys are rejected so that a typo never silently changes behaviour.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "AdmissionConfig",
    "Config",
    "FullPolicy",
    "PoolConfig",
    "ServerConfig",
    "SessionConfig",
    "load_config",
    "parse_config",
]

FullPolicy = Literal["reject", "drop-lru", "shed-low-priority"]
PositiveInt = Annotated[int, Meta(ge=1)]


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080  # 0 = pick a free port
    shutdown_grace_s: Annotated[float, Meta(ge=0)] = 10.0


class AdmissionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    queue_capacity: PositiveInt = 64  # queued tasks per pool, all priorities (ORCH-1101)
    full_policy: FullPolicy = "reject"
    default_max_tokens: PositiveInt = 256
    max_tokens_limit: PositiveInt = 8192
    event_log_retention_s: Annotated[float, Meta(gt=0)] = 600.0
    max_retained_tasks: PositiveInt = 10_000


class SessionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ttl_ms: PositiveInt = 600_000
    max_turns: PositiveInt = 8


class PoolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One pool of identical engine replicas.

    With ``endpoints`` empty the embedded pool manager provisions and starts
    ``replicas`` engine processes; with ``endpoints`` set, orchestratord uses
    already-running engines at those URLs and starts nothing.
    """

    id: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    engine: str = "llamacpp-http"
    model: str = "pypi:qwen2.5-coder-0.5b-instruct-q4_k_m"
    replicas: PositiveInt = 1
    slots: PositiveInt = 1  # parallel sequences per replica (-np)
    ctx: PositiveInt = 2048  # per-slot context window in tokens
    threads: PositiveInt | None = None
    devices: str | None = None  # CUDA_VISIBLE_DEVICES mask; None = CPU
    engine_binary: str | None = None
    engine_flags: list[str] = []
    continuous_batching: bool = True
    endpoints: list[str] = []
    # sha256 of the model behind ``endpoints`` (engines do not report it);
    # pools the pool manager launches get it from provisioning.
    model_digest: str | None = None
    engine_version: str | None = None
    adapter_options: dict[str, str | int | float | bool] = {}
    startup_timeout_s: Annotated[float, Meta(gt=0)] = 120.0


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    admission: AdmissionConfig = msgspec.field(default_factory=AdmissionConfig)
    sessions: SessionConfig = msgspec.field(default_factory=SessionConfig)
    allow_cpu_inference: bool = False
    pools: list[PoolConfig] = []


def parse_config(data: bytes | str, *, fmt: Literal["yaml", "json"] = "yaml") -> Config:
    """Decode and validate a config document (raises ``msgspec.ValidationError``)."""
    if fmt == "json":
        cfg = msgspec.json.decode(data, type=Config)
    else:
        cfg = msgspec.yaml.decode(data, type=Config)
    ids = [p.id for p in cfg.pools]
    if len(ids) != len(set(ids)):
        raise msgspec.ValidationError(f"pool ids must be unique, got {ids}")
    return cfg


def load_config(path: str) -> Config:
    with open(path, "rb") as fh:
        data = fh.read()
    return parse_config(data, fmt="json" if path.endswith(".json") else "yaml")
