"""The ``catalog`` section of the config: where the catalog lives and its trust policy
(ORCH-3311..3313, ``.specs/33-catalog.md``)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = ["CatalogConfig", "TrustConfig", "TrustKey", "TrustMode"]

TrustMode = Literal["strict", "warn", "off"]


class TrustKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An Ed25519 public key whose signatures the operators accept (ORCH-3311)."""

    id: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    # the raw 32-byte public key, base64 (44 characters with padding)
    public_key: Annotated[str, Meta(pattern=r"^[A-Za-z0-9+/]{43}=$")]


class TrustConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # warn: configs written before the catalog (unsigned models) keep working (ORCH-3313)
    mode: TrustMode = "warn"
    keys: list[TrustKey] = []
    # model sources a model may be registered from; None = every installed one
    allowed_sources: list[str] | None = None


class CatalogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # SQLite file; None = $XDG_DATA_HOME/llama-orch/catalog.sqlite3 (ORCH-3320); with
    # `state: {backend: valkey}` the catalog is the shared store's (ORCH-3383) and the
    # file keeps only the artifacts
    path: str | None = None
    trust: TrustConfig = msgspec.field(default_factory=TrustConfig)
    # the largest artifact (prompt, plan, output) POST /v1/artifacts stores (ORCH-3351)
    artifact_max_bytes: Annotated[int, Meta(ge=1, le=64 << 20)] = 1 << 20
