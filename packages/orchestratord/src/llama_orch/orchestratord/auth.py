"""API keys, roles and the per-route guard (ORCH-8001..8008).

Keys are random tokens handed out by ``orchestratord keygen``; config holds
only ``sha256:<hex>`` of each key. SHA-256 and not a slow password hash
(scrypt, argon2): a key carries 256 random bits, so no dictionary or brute
force applies to its hash, and a slow hash would cost tens of milliseconds of
CPU on every request. A presented key is hashed once and compared with every
configured hash by :func:`hmac.compare_digest`, without stopping at a match,
so the time taken does not tell which key (or how much of one) matched.

Roles: ``tenant`` keys use the data plane for their own tenant's tasks and
sessions; ``admin`` keys use the control plane. Capabilities and pool health
accept either role; ``/metrics`` wants ``admin``. ``auth.public_metrics`` and
``auth.public_health`` open those two without a key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import msgspec
from llama_orch.core.config import ApiKey, AuthConfig, check_api_keys
from llama_orch.core.errors import Forbidden, Unauthenticated
from llama_orch.core.queue import DEFAULT_TENANT
from starlette.requests import Request
from starlette.responses import Response

from .errors import StartupError
from .metrics import BatchedCounter

__all__ = [
    "ANONYMOUS",
    "KEY_PREFIX",
    "MIN_KEY_LENGTH",
    "Access",
    "Authenticator",
    "Principal",
    "hash_key",
    "load_keys",
    "new_key",
]

_log = logging.getLogger("llama_orch.orchestratord.auth")

KEY_PREFIX = "llo_"  # lets secret scanners recognise a leaked key
MIN_KEY_LENGTH = 32
Access = Literal["tenant", "admin", "any", "metrics", "health"]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: Literal["admin", "tenant"] | None  # None: auth disabled, every role
    tenant: str


ANONYMOUS = Principal(key_id="", role=None, tenant=DEFAULT_TENANT)


def new_key() -> str:
    """A fresh key: the prefix plus 32 random bytes, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The form config stores (ORCH-8002)."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


_key_list = msgspec.json.Decoder(list[ApiKey])


def load_keys(auth: AuthConfig) -> list[ApiKey]:
    """Keys from config plus ``auth.keys_file``; raises StartupError when unusable."""
    keys = list(auth.keys)
    if auth.keys_file is not None:
        try:
            with open(auth.keys_file, "rb") as fh:
                raw = fh.read()
            if auth.keys_file.endswith(".json"):
                keys += _key_list.decode(raw)
            else:
                keys += msgspec.yaml.decode(raw, type=list[ApiKey])
        except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise StartupError(f"auth.keys_file {auth.keys_file}: {exc}") from exc
    try:
        check_api_keys(keys)
    except msgspec.ValidationError as exc:
        raise StartupError(str(exc)) from exc
    if auth.enabled and not keys:
        raise StartupError(
            "auth is enabled but no API key is configured: add `auth.keys` or "
            "`auth.keys_file` (hashes from `orchestratord keygen`), or set "
            "`auth.enabled: false` for development only"
        )
    return keys


class Authenticator:
    def __init__(self, auth: AuthConfig, keys: list[ApiKey]) -> None:
        self.enabled = auth.enabled
        self._public: set[Access] = set()
        if auth.public_metrics:
            self._public.add("metrics")
        if auth.public_health:
            self._public.add("health")
        self._keys = [(bytes.fromhex(k.hash.removeprefix("sha256:")), k) for k in keys]
        # auth_refused_total (ORCH-8017), set by build_app; counted where a request is
        # refused, never on an accepted one
        self.refusals: BatchedCounter | None = None

    def reload(self, auth: AuthConfig) -> list[str]:
        """Replace the keys with ``auth``'s (ORCH-8009), checked as at startup: raises
        :class:`StartupError` and keeps the running keys when they are unusable. The
        on/off and public switches stay; returns the settings that differ and were
        kept (they need a restart)."""
        # checked against the running on/off switch: a file that turns auth off and drops
        # every key must not leave authentication on with no key
        keys = load_keys(msgspec.structs.replace(auth, enabled=self.enabled))
        self._keys = [(bytes.fromhex(k.hash.removeprefix("sha256:")), k) for k in keys]
        kept = {
            "auth.enabled": auth.enabled != self.enabled,
            "auth.public_metrics": auth.public_metrics != ("metrics" in self._public),
            "auth.public_health": auth.public_health != ("health" in self._public),
        }
        return [name for name, differs in kept.items() if differs]

    def identify(self, authorization: str | None, api: str = "orchqueue") -> Principal:
        """The key's principal, or :class:`Unauthenticated` (ORCH-8003), counted for
        ``api`` (ORCH-8017)."""
        if authorization is None:
            raise self._unauthenticated(
                api, "an API key is required: send `Authorization: Bearer <key>`"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise self._unauthenticated(api, "the Authorization header must be `Bearer <key>`")
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: ApiKey | None = None
        for stored, key in self._keys:  # every key, no early exit (ORCH-8002)
            if hmac.compare_digest(digest, stored):
                found = key
        if found is None:
            raise self._unauthenticated(api, "the API key is not valid")
        return Principal(found.id, found.role, found.tenant or DEFAULT_TENANT)

    def _unauthenticated(self, api: str, message: str) -> Unauthenticated:
        if self.refusals is not None:  # ORCH-8017: nothing of the presented key
            self.refusals.add(1, {"reason": "unauthenticated", "api": api, "tenant": "none"})
        return Unauthenticated(message)

    def forbidden(self, who: Principal, need: str, api: str) -> Forbidden:
        """The 403 for a valid key of the wrong role (ORCH-8003), counted with the
        key's configured tenant (ORCH-8017; ``none`` for an admin key)."""
        if self.refusals is not None:
            tenant = who.tenant if who.role == "tenant" else "none"
            self.refusals.add(1, {"reason": "forbidden", "api": api, "tenant": tenant})
        return Forbidden(f"this endpoint needs a key with role {need!r}, not {who.role!r}")

    def check(self, request: Request, access: Access) -> Principal:
        if not self.enabled or access in self._public:
            return ANONYMOUS
        who = self.identify(request.headers.get("authorization"))
        allowed = {
            "tenant": who.role == "tenant",
            "admin": who.role == "admin",
            "any": True,
            "health": True,
            "metrics": who.role == "admin",
        }[access]
        if not allowed:
            _log.warning(
                "forbidden: key %s (role %s) on %s %s",
                who.key_id,
                who.role,
                request.method,
                request.url.path,
            )
            raise self.forbidden(who, "tenant" if access == "tenant" else "admin", "orchqueue")
        return who

    def guard(self, endpoint: Endpoint, access: Access) -> Endpoint:
        """``endpoint`` behind the check; the principal lands in ``request.state``."""

        async def guarded(request: Request) -> Response:
            request.state.principal = self.check(request, access)
            return await endpoint(request)

        guarded.__name__ = getattr(endpoint, "__name__", "endpoint")
        return guarded
