"""The catalog's trust policy: digests, Ed25519 signatures, allowed sources
(ORCH-3310..3314).

Why Ed25519 through ``cryptography`` rather than minisign: a minisign
signature is Ed25519 too, but over a BLAKE2b prehash of the *file* plus a
signed trusted comment, so checking it means hashing every model twice (sha256
for the cache, BLAKE2b for minisign) and parsing a second key format. Signing
the sha256 digest we already compute costs one 64-byte verify, and
``cryptography`` is already in the dependency tree (TLS tests) and well kept.
The signed message is the ASCII text ``sha256:<hex>``, so an operator signs
with any Ed25519 tool, e.g. ``openssl pkeyutl -sign -rawin -in msg`` (README).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from llama_orch.core.catalog_config import TrustConfig

__all__ = ["Signature", "TrustPolicy", "Verdict", "signed_message"]

_log = logging.getLogger("llama_orch.orchestratord.catalog")

Reason = Literal[
    "ok",
    "digest_mismatch",
    "unsigned",
    "bad_signature",
    "unlisted_key",
    "source_not_allowed",
    "fetch_failed",
]


class Signature(msgspec.Struct, forbid_unknown_fields=True):
    key_id: str
    signature: str  # base64 of the 64-byte Ed25519 signature


@dataclass(frozen=True, slots=True)
class Verdict:
    result: Literal["pass", "fail", "warn"]
    reason: Reason
    detail: str

    @property
    def refused(self) -> bool:
        return self.result == "fail"


def signed_message(digest: str) -> bytes:
    """What a signature covers (ORCH-3311)."""
    return f"sha256:{digest}".encode("ascii")


class TrustPolicy:
    def __init__(self, config: TrustConfig) -> None:
        self.mode = config.mode
        self.allowed_sources = config.allowed_sources
        self._keys = {
            k.id: Ed25519PublicKey.from_public_bytes(base64.b64decode(k.public_key))
            for k in config.keys
        }

    def source_verdict(self, source: str) -> Verdict | None:
        """A refusal of ``source`` before any byte is fetched, or None (ORCH-3312)."""
        if self.mode == "off" or self.allowed_sources is None:
            return None
        if source in self.allowed_sources:
            return None
        detail = f"source {source!r} is not in allowed_sources"
        return Verdict("fail" if self.mode == "strict" else "warn", "source_not_allowed", detail)

    def judge(self, *, source: str, digest: str, signatures: list[Signature]) -> Verdict:
        """The verdict on an artifact whose bytes already match ``digest``."""
        if self.mode == "off":
            return Verdict("pass", "ok", "trust mode off")
        refused = self.source_verdict(source)
        if refused is not None:
            return refused
        finding = self._signatures(digest, signatures)
        if finding is None:
            return Verdict("pass", "ok", "signed by a listed key")
        reason, detail = finding
        return Verdict("fail" if self.mode == "strict" else "warn", reason, detail)

    def _signatures(self, digest: str, signatures: list[Signature]) -> tuple[Reason, str] | None:
        if not signatures:
            return "unsigned", "no signature"
        found: tuple[Reason, str] = ("unlisted_key", "")
        for sig in signatures:
            key = self._keys.get(sig.key_id)
            if key is None:
                found = ("unlisted_key", f"key {sig.key_id!r} is not in catalog.trust.keys")
                continue
            try:
                key.verify(base64.b64decode(sig.signature, validate=True), signed_message(digest))
            except (InvalidSignature, binascii.Error, ValueError):
                found = ("bad_signature", f"the signature by {sig.key_id!r} does not verify")
                continue
            return None
        return found


def log_verification(model: str, digest: str, verdict: Verdict, stage: str) -> None:
    """One line per verification (ORCH-3314)."""
    level = logging.INFO if verdict.result == "pass" else logging.WARNING
    _log.log(
        level,
        "catalog verification",
        extra={
            "model": model,
            "digest": digest,
            "stage": stage,
            "result": verdict.result,
            "reason": verdict.reason,
            "detail": verdict.detail,
        },
    )
